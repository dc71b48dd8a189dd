import time, numpy as np, minignn
from minignn.layers import MaxPool2d, MaxEntPool2d
from minignn.layers.maxent import maxent_pool2d_forward, maxent_pool2d_backward
x = np.random.default_rng(0).standard_normal((128, 64, 32, 32)).astype(np.float32)
m = MaxPool2d(3, 2, 1)
def t(f, n=15):
    f(); ts = []
    for _ in range(n):
        a = time.perf_counter(); f(); ts.append(time.perf_counter() - a)
    return sorted(ts)[n // 2] * 1e3
def mp(): y = m.forward(x); m.backward(np.ones_like(y))
lam = np.full((128, 64), 0.5, np.float32)
def me(): y, s = maxent_pool2d_forward(x, lam, None, 3, 2, 1); maxent_pool2d_backward(np.ones_like(y), s)
print(f"maxpool 3x3s2p1 fwd+bwd {t(mp):.2f} ms   maxent 3x3s2p1 (generic path) fwd+bwd {t(me, 7):.2f} ms")
