// llama.cpp baseline (prebuilt binaries from the npm package node-llama-cpp): prefill and decode tokens/s
// of a GGUF model on N CPU threads, best of 5 runs, printed as one JSON line.
// Usage: node bench.mjs MODEL.gguf THREADS [PROMPT_TOKENS=128] [DECODE_TOKENS=128]   (see run.sh)
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const [modelPath, threadsArg, promptArg = "128", decodeArg = "128"] = process.argv.slice(2);
if (!modelPath || !threadsArg) {
    console.error("usage: node bench.mjs MODEL.gguf THREADS [PROMPT_TOKENS] [DECODE_TOKENS]");
    process.exit(2);
}
const threads = Number(threadsArg), promptTokens = Number(promptArg), decodeTokens = Number(decodeArg);
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false});
const model = await llama.loadModel({modelPath, gpuLayers: 0});
const context = await model.createContext({contextSize: promptTokens + decodeTokens + 8, batchSize: promptTokens, threads});
const sequence = context.getSequence();
const vocab = model.fileInfo.metadata.tokenizer.ggml.tokens.length;
// A fixed pseudo-random prompt of ordinary tokens (ids ≥ 259 skip control and byte tokens).
const prompt = Array.from({length: promptTokens}, (_, i) => 259 + (i * 7919) % (vocab - 259));

let bestPrefill = 0, bestDecode = 0;
for (let run = 0; run < 5; run++) {
    await sequence.clearHistory();
    let start = performance.now();
    await sequence.evaluateWithoutGeneratingNewTokens(prompt);
    bestPrefill = Math.max(bestPrefill, promptTokens / ((performance.now() - start) / 1000));

    // Decode: one token per step; the clock starts after the first generated token.
    let generated = 0;
    start = 0;
    for await (const token of sequence.evaluate([prompt[0]], {temperature: 0})) {
        if (generated === 0) start = performance.now();
        if (++generated > decodeTokens) break;
    }
    bestDecode = Math.max(bestDecode, decodeTokens / ((performance.now() - start) / 1000));
}
console.log(JSON.stringify({engine: "llama.cpp", model: modelPath, threads, promptTokens, decodeTokens,
    prefillTokensPerSecond: Math.round(bestPrefill), decodeTokensPerSecond: Math.round(bestDecode)}));
await context.dispose();
await model.dispose();
await llama.dispose();
