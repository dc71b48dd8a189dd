"""The GPU code path without a GPU: the compile tier (every kernels.cu built for sm_80 and sm_90
with no warning and no register spill, by nvcc and by NVRTC where each exists) and the gpu-sim
launcher itself (indices, argument checks against the kernel's signature, the two-order race
check, the on-disk cache). The kernels' math is checked by the contract suite (tests/test_ops.py)
on the gpu-sim device."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minignn import backend, cuda
from minignn.cuda import toolchain

SIM = backend.sim_unavailable_reason()
needs_sim = pytest.mark.skipif(bool(SIM), reason=f"no gpu-sim: {SIM or 'n/a'}")
PROBE = cuda.Source(Path(__file__).with_name("cuda") / "sim_probe.cu")
SOURCES = toolchain.sources()


def _compilers():
    out = []
    for name, ok, why in (("nvcc", toolchain.nvcc() is not None, "nvcc is not installed"),
                          ("nvrtc", toolchain.nvrtc_available(), "CuPy's NVRTC is not installed")):
        out.append(pytest.param(name, id=name, marks=[] if ok else [pytest.mark.skip(reason=why)]))
    return out


def test_every_family_with_a_gpu_kernel_has_its_source_listed():
    names = {s.path.parent.name for s in SOURCES}
    assert {"pooling"} <= names, names
    for s in SOURCES:
        assert s.kernels, f"{s.path}: no extern \"C\" __global__ kernel found"


@pytest.mark.skipif(toolchain.nvcc() is None and not toolchain.nvrtc_available(),
                    reason="neither nvcc nor CuPy's NVRTC is installed: the compile tier cannot run here")
@pytest.mark.parametrize("compiler", _compilers())
@pytest.mark.parametrize("arch", toolchain.ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=[f"{s.path.parent.name}" for s in SOURCES])
def test_compiles_for_the_gpu_without_warnings_or_spills(source, arch, compiler):
    if compiler == "nvcc":
        rep = toolchain.compile_nvcc(source, arch)
        assert set(rep.kernels) >= set(source.kernels)
        for k in rep.kernels.values():
            assert 0 < k.registers <= 255 and k.spill_stores == k.spill_loads == 0, k
        print(f"{source.path.parent.name} {arch}: " + ", ".join(f"{k.name} {k.registers} regs"
                                                               for k in rep.kernels.values()))
    else:
        toolchain.compile_nvrtc(source, arch)


def test_the_compile_tier_reports_errors_and_spills_as_failures(tmp_path):
    if toolchain.nvcc() is None:
        pytest.skip("nvcc is not installed")
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void broken(float* y) { y[0] = undeclared; }\n')
    with pytest.raises(toolchain.CompileError, match="undeclared"):
        toolchain.compile_nvcc(cuda.Source(bad))
    warn = tmp_path / "warn.cu"
    warn.write_text('extern "C" __global__ void unused(float* y) { int z = 3; y[0] = 1.0f; }\n')
    with pytest.raises(toolchain.CompileError):
        toolchain.compile_nvcc(cuda.Source(warn))


@needs_sim
@pytest.mark.parametrize("source", SOURCES, ids=[f"{s.path.parent.name}" for s in SOURCES])
def test_compiles_as_cpp_for_gpu_sim_with_warnings_as_errors(source, tmp_path):
    from minignn.cuda import sim
    tu = tmp_path / "tu.cpp"
    tu.write_text(sim._translation_unit(source))
    cmd = [c for c in sim.build_command(source, str(tmp_path / "k.so"), str(tu), extra=("-Wall", "-Werror"))
           if c != "-w"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


@needs_sim
@pytest.mark.parametrize("grid, block", [((3,), (4,)), ((2, 3), (4, 2)), ((2, 1, 2), (2, 2, 3))])
def test_every_thread_of_the_grid_runs_once_with_its_own_indices(grid, block):
    nb, nt = int(np.prod(grid)), int(np.prod(block))
    out = backend.to_device(np.full(nb * nt, -1, dtype=np.int64), "gpu-sim")
    cuda.launch(PROBE, "where_am_i", grid, block, out, np.int32(nb * nt))
    b, t = np.divmod(np.arange(nb * nt), nt)
    np.testing.assert_array_equal(out.get(), 1000000 * b + t)


@needs_sim
def test_a_grid_stride_kernel_covers_more_outputs_than_threads():
    x = np.arange(1000, dtype=np.float32)
    y = backend.sim_numpy.empty(1000, dtype=np.float32)
    cuda.launch(PROBE, "axpb_f32", (3,), (32,), backend.to_device(x, "gpu-sim"), np.float32(2), np.float64(1),
                np.int64(1000), y)
    np.testing.assert_array_equal(y.get(), 2 * x + 1)
    cuda.launch(PROBE, "axpb_f32", (0,), (32,), backend.to_device(x, "gpu-sim"), np.float32(5), np.float64(1),
                np.int64(1000), y)      # no blocks: nothing runs
    np.testing.assert_array_equal(y.get(), 2 * x + 1)


@needs_sim
def test_arguments_are_checked_against_the_kernel_signature():
    x = backend.to_device(np.zeros(8, np.float32), "gpu-sim")
    y = backend.sim_numpy.empty(8, dtype=np.float32)
    ok = (x, np.float32(1), np.float64(0), np.int64(8), y)

    def call(*args):
        cuda.launch(PROBE, "axpb_f32", (1,), (8,), *args)

    call(*ok)
    with pytest.raises(TypeError, match=r"argument 1: expected a NumPy float32 scalar .* got float"):
        call(x, 1.0, *ok[2:])
    with pytest.raises(TypeError, match=r"argument 3: expected a NumPy int64 scalar .* got int32"):
        call(*ok[:3], np.int32(8), y)
    with pytest.raises(TypeError, match=r"argument 0: expected dtype float32 for const float32\*, got float64"):
        call(backend.to_device(np.zeros(8), "gpu-sim"), *ok[1:])
    with pytest.raises(TypeError, match=r"expected 5 arguments"):
        call(*ok[:4])
    with pytest.raises(ValueError, match="argument 0: expected a C-contiguous array"):
        call(backend.to_device(np.zeros(16, np.float32), "gpu-sim")[::2], *ok[1:])
    with pytest.raises(TypeError, match=r"expected its arrays on one GPU device"):
        call(np.zeros(8, np.float32), *ok[1:])
    with pytest.raises(ValueError, match="kernel: expected one of"):
        cuda.launch(PROBE, "no_such_kernel", (1,), (1,), y)


@needs_sim
@pytest.mark.parametrize("kernel, args", [("last_writer_wins", lambda: ()),
                                          ("reads_a_neighbour", lambda: (np.int32(64),))])
def test_a_kernel_whose_result_depends_on_the_thread_order_is_caught(kernel, args, monkeypatch):
    out = backend.sim_numpy.zeros(64, dtype=np.int32)
    monkeypatch.setenv(cuda.SIM_CHECK_ENV, "0")
    cuda.launch(PROBE, kernel, (4,), (16,), out, *args())       # unchecked: runs, some result
    monkeypatch.setenv(cuda.SIM_CHECK_ENV, "1")
    from minignn.cuda.sim import SimOrderError
    with pytest.raises(SimOrderError, match=f"launch {kernel}: output array 0 differs between two"):
        cuda.launch(PROBE, kernel, (4,), (16,), out, *args())


@needs_sim
def test_the_compiled_library_is_cached_on_disk_and_reused(tmp_path):
    code = ("import numpy as np; from pathlib import Path; from minignn import backend, cuda;"
            f"src = cuda.Source({str(PROBE.path)!r});"
            "y = backend.sim_numpy.zeros(4, dtype=np.int64); cuda.launch(src, 'where_am_i', (1,), (4,), y, np.int32(4));"
            "print(y.get().tolist())")
    env = dict(os.environ, MINIGNN_SIM_CACHE=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert first.returncode == 0 and first.stdout.strip() == "[0, 1, 2, 3]", first.stderr
    libs = sorted(tmp_path.glob("*.so"))
    assert len(libs) == 1 and libs[0].name.startswith("cuda-sim_probe-"), libs
    stamp = libs[0].stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == first.stdout
    assert sorted(tmp_path.glob("*.so")) == libs and libs[0].stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "a temporary build folder was left behind"


@needs_sim
def test_sim_arrays_stay_on_the_device_through_xp_code():
    xp = backend.sim_numpy
    a = backend.to_device(np.arange(6.0).reshape(2, 3), "gpu-sim")
    assert backend.device_of(a) == "gpu-sim" and backend.get_array_module(a) is xp
    for r in (a + 1, xp.exp(a), a.sum(), a.sum(axis=0), xp.where(a > 1, a, 0), xp.ascontiguousarray(a.T),
              xp.matmul(a, a.T), xp.zeros((2, 2)), xp.concatenate([a, a]), a[0], xp.asarray(np.ones(3))):
        assert isinstance(r, backend.SimArray), type(r)
    assert xp.float32 is np.float32 and isinstance(a.get(), np.ndarray) and not isinstance(a.get(), backend.SimArray)
    f = np.asfortranarray(np.ones((3, 4)))
    moved = backend.to_device(f, "gpu-sim")
    assert moved.flags.f_contiguous and not np.shares_memory(moved, f)     # a copy in the same layout
    assert backend.to_device(moved, "gpu-sim") is moved
    back = backend.to_device(moved, "cpu")
    assert type(back) is np.ndarray and not np.shares_memory(back, moved)
