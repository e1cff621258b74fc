"""Where torch.compile's time goes on the small step (device probe): compile at a full segment, then
partial segments (generation), then steady-state latency. argv: mode (default|reduce-overhead) dynamic (none|true)."""
import sys
import time

import torch

from neat_edge.config import PRESETS
from neat_edge.model.checkpoint import build
from neat_edge.runtimes import open_model_session

mode, dyn = sys.argv[1], {"none": None, "true": True}[sys.argv[2]]
preset, device = (sys.argv[3:5] + ["small", "cuda"][len(sys.argv) - 3:])[:2]  # tiny cpu: a quick check here
torch.manual_seed(0)
model = build(PRESETS[preset]).eval()
s = open_model_session(model)
s.backend = type(s.backend)(model, device)
kw = {"backend": "eager"} if mode == "eager" else {"mode": mode}  # eager: dynamo only
s.backend.module = torch.compile(s.backend.module, dynamic=dyn, **kw)
data = bytes(range(32, 127)) * 200
t0 = time.time()
sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)


def say(msg):
    print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)


seg = s.config.segment_len
t = time.time(); s.score(data[:seg]); sync(); say(f"first full segment {time.time() - t:.1f}s")
for n in (1, 2, 3, 57, 200):
    t = time.time(); s.score(data[seg:seg + n]); sync(); say(f"partial {n}: {time.time() - t:.2f}s")
    s.reset()
t = time.time(); s.score(data[: 8 * seg]); sync(); say(f"8 segments {time.time() - t:.3f}s")
t = time.time(); s.score(data[: 32 * seg]); sync(); dt = time.time() - t
say(f"32 segments {dt:.3f}s = {32 * seg / dt:.0f} B/s")
t = time.time(); s.generate(b"def f(", 64); say(f"generate 64 (warm) {time.time() - t:.2f}s")
t = time.time(); s.generate(b"def g(", 64); dt = time.time() - t; say(f"generate 64 {dt:.2f}s = {64 / dt:.1f} B/s")
from torch._dynamo.utils import counters
say(f"dynamo {dict(counters['stats'])}")
