// Known answers for TensorCodec's K-quant decoders (tests/Cluster.Tests/Formats/data/kquant-reference.txt), made with the
// llama.cpp that bench/llama-server.sh builds:
//   L=bench/results/llama.cpp; gcc -O1 -I$L/ggml/include bench/kquant-reference.c -L$L/build/bin -lggml-base -lggml -o /tmp/kq
//   LD_LIBRARY_PATH=$L/build/bin /tmp/kq
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include "ggml.h"
int main(void) {
    enum ggml_type types[] = { GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K };
    const char *names[] = { "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K" };
    float x[512], y[512];
    uint32_t s = 12345;
    for (int i = 0; i < 512; i++) { s = s * 1664525u + 1013904223u; x[i] = ((s >> 8) / 16777216.0f - 0.5f) * (1.0f + (i % 64) / 16.0f); }
    unsigned char q[4096];
    for (int t = 0; t < 5; t++) {
        size_t bytes = ggml_quantize_chunk(types[t], x, q, 0, 1, 512, NULL);
        ggml_get_type_traits(types[t])->to_float(q, y, 512);
        printf("%s ", names[t]);
        for (size_t i = 0; i < bytes; i++) printf("%02x", q[i]);
        printf(" ");
        for (int i = 0; i < 512; i++) { uint32_t b; memcpy(&b, &y[i], 4); printf("%08x", b); }
        printf("\n");
    }
    return 0;
}
