#!/usr/bin/env python3
# The stall a SIGKILLed silo costs a stream under the Aspire app host: `python3 bench/kill-silo.py [--silo silo-2]
# [--runs 3] [--tokens 200] [--kill-at 20]`, from the repository root. It starts the app host (two silos, the story model
# as pp=2; the first start trains that model, about 3 minutes on 2 cores), streams a greedy completion through the
# gateway undisturbed, then, for each run, streams the same completion and SIGKILLs the named silo's process at the
# kill-at-th token (after the app host's training demo has ended); it prints the time from the kill to the stream's end, the longest gap between two chunks after the
# kill, and whether the text equals the undisturbed run's. Aspire restarts nothing: after a run the app host is
# stopped and started again for the next.
import argparse, json, os, signal, subprocess, sys, time, urllib.request

API = "http://127.0.0.1:8080"
LOG = "/tmp/kill-silo-apphost.log"   # the app host's console
PROMPT = "Once upon a time, there was a little girl named Lily. She"


def get(path, timeout=5):
    with urllib.request.urlopen(API + path, timeout=timeout) as response:
        return json.load(response)


def wait_ready(app, limit_s=900):
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if app.poll() is not None:
            sys.exit(f"the app host exited with {app.returncode}")
        try:
            if any(m["id"] == "default" for m in get("/v1/models")["data"]):
                return
        except Exception:
            pass
        time.sleep(1)
    sys.exit("the gateway did not serve the model 'default' in time")


def wait_for_demo(limit_s=600):
    """The app host's training demo (a job on both silos) runs first; measuring beside it would measure it too."""
    deadline = time.time() + limit_s
    while time.time() < deadline:
        with open(LOG) as f:
            if any(line.startswith("Training demo: ") and "teaches" not in line for line in f):   # trained, ended or failed
                return
        time.sleep(2)
    sys.exit("the training demo did not end in time")


def silo_pids(name):
    """Every process started with Cluster__SiloName=name (the silo, and any launcher around it)."""
    marker = f"Cluster__SiloName={name}".encode()
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def stream(tokens, on_chunk=None):
    """Streams a greedy completion; returns its text and the arrival time of each content chunk."""
    body = json.dumps({"model": "default", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True}).encode()
    request = urllib.request.Request(API + "/v1/completions", body, {"Content-Type": "application/json"})
    text, arrivals = [], []
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"the stream ended with an error: {event['error']}")
            piece = event["choices"][0].get("text", "")
            if piece:
                text.append(piece)
                arrivals.append(time.time())
                if on_chunk:
                    on_chunk(len(arrivals))
    return "".join(text), arrivals


def start_app_host():
    log = open(LOG, "w")
    return subprocess.Popen(["dotnet", "run", "-c", "Release", "--project", "src/AppHost"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_app_host(app):
    os.killpg(app.pid, signal.SIGTERM)
    try:
        app.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(app.pid, signal.SIGKILL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--silo", default="silo-2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--kill-at", type=int, default=20)
    args = parser.parse_args()
    undisturbed = None
    for run in range(args.runs):
        app = start_app_host()
        try:
            wait_ready(app)
            wait_for_demo()
            holders = [(h["key"], s["silo"]) for s in get("/v1/cluster/silos")["data"] for d in s["devices"] for h in d["holders"]]
            if undisturbed is None:
                undisturbed, _ = stream(args.tokens)
            killed = {}

            def kill(count):
                if count == args.kill_at and not killed:
                    pids = silo_pids(args.silo)
                    if not pids:
                        sys.exit(f"no process of {args.silo} found")
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    killed["at"] = time.time()

            text, arrivals = stream(args.tokens, kill)
            if not killed:
                sys.exit(f"the stream ended after {len(arrivals)} chunks, before the kill: lower --kill-at")
            after = [t for t in arrivals if t >= killed["at"]]
            gaps = [b - a for a, b in zip([killed["at"]] + after, after)]
            print(f"run {run + 1}: shards {holders}; {args.silo} killed at chunk {args.kill_at}; stream ended "
                  f"{arrivals[-1] - killed['at']:.2f} s after the kill; longest gap {max(gaps, default=0):.2f} s; "
                  f"text {'equals' if text == undisturbed else 'DIFFERS FROM'} the undisturbed run's ({len(arrivals)} chunks)", flush=True)
        finally:
            stop_app_host(app)


if __name__ == "__main__":
    main()
