"""tests/bench/gpu_decode_profile.py's trace readers on a hand-made chrome trace (the script itself needs a GPU)."""

import importlib.util
import json
from pathlib import Path


def _script():
    path = Path(__file__).resolve().parent / "gpu_decode_profile.py"
    spec = importlib.util.spec_from_file_location("gpu_decode_profile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trace(tmp_path, kernels):
    events = [{"cat": "kernel", "name": name, "ts": ts, "dur": dur, "args": {}} for name, ts, dur in kernels]
    events.append({"cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 1.0})  # not a GPU event
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    return path


def test_critical_path_charges_overlapping_kernels_only_their_own_tail(tmp_path):
    """Kernels launched early (PDL) overlap: each is charged its end minus the previous end, so the shares add up to
    the span from the first kernel's end to the last one's."""
    path = _trace(tmp_path, [("gemv", 0.0, 20.0), ("attn", 18.0, 10.0),  # attn ends at 28: 8 us after the gemv
                             ("gemv", 25.0, 17.0),  # ends at 42: 14 us
                             ("norm", 44.0, 2.0)])  # ends at 46 after a 2 us gap: 4 us
    text = _script().critical_path(path)
    lines = text.splitlines()
    assert lines[0].startswith("critical path 0.03 ms over 4 GPU events")  # 46 - 20 = 26 us
    shares = {line.split()[-1]: (float(line.split()[0]), int(line.split()[1])) for line in lines[1:]}
    assert shares == {"gemv": (14.0, 1), "attn": (8.0, 1), "norm": (4.0, 1)}
    assert [line.split()[-1] for line in lines[1:]] == ["gemv", "attn", "norm"]  # largest share first


def test_trace_gaps_counts_idle_time_before_each_kernel(tmp_path):
    path = _trace(tmp_path, [("a", 0.0, 10.0), ("b", 15.0, 5.0), ("a", 20.0, 10.0), ("b", 40.0, 1.0)])
    text = _script().trace_gaps(path)
    assert text.splitlines()[0].startswith("GPU busy 0.03 ms over a 0.04 ms span; idle 0.01 ms in 2 gaps")
    assert any(line.split()[:2] == ["15.0", "2"] and line.endswith("b") for line in text.splitlines())
