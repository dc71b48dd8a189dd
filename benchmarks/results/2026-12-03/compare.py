"""Per benchmark row: median over runs of the first time column (ms) and of the row's last ratio
column (x floor, x torch or x own max), base (793141f) vs new; both columns from the same run."""
import glob, re, statistics
def rows(path):
    out = {}
    for line in open(path):
        if line.startswith(("===", "threads", "runtime", "---")) or "  " not in line:
            continue
        key = re.split(r"\s{2,}", line.strip())[0]
        vals = re.findall(r"(?<![\w(,])-?\d+\.\d+(?![\w)])", line[len(key):])
        if len(vals) >= 2:
            out[key] = [float(v) for v in vals]
    return out
base = [rows(p) for p in sorted(glob.glob("bench-base-*.log"))]
new = [rows(p) for p in sorted(glob.glob("bench-new-*.log"))]
keys = [k for k in base[0] if sum(k in r for r in base) >= 3 and sum(k in r for r in new) >= 3]
med = lambda rs, k, i: statistics.median(r[k][i] for r in rs if k in r)
print(f"{'benchmark row (median of runs)':38s} {'base ms':>9s} {'new ms':>9s} {'new/base':>8s} {'base ratio':>10s} {'new ratio':>10s}")
for k in keys:
    b, n = med(base, k, 0), med(new, k, 0)
    print(f"{k[:38]:38s} {b:9.2f} {n:9.2f} {n / b:8.2f} {med(base, k, -1):10.2f} {med(new, k, -1):10.2f}")
print(f"runs: base {len(base)}, new {len(new)}")
