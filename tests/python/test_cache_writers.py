"""The factor cache with several writers at once (processes here, nodes of a cluster on shared storage):
every process stores the same keys at the same time; each entry ends complete and equal to a fresh one."""
import os
import subprocess
import sys

import pandas as pd

import postsvd
from postsvd.synthetic import make_pair

SIZES = dict(model_type="llama", layers=2, hidden=64, intermediate=96, heads=4, kv_heads=2)
WRITERS = 4


def test_processes_writing_the_same_keys_leave_complete_entries(tmp_path):
    pair = make_pair(tmp_path / "base", tmp_path / "post", dtype="float32", seed=6, **SIZES)
    cache = tmp_path / "factors"
    script = ("import sys, postsvd; r = postsvd.compare(sys.argv[1], sys.argv[2], cache=sys.argv[3], "
              "progress=False, num_threads=1); print(r.decompositions['computed'] + r.decompositions['loaded'])")
    writers = [subprocess.Popen([sys.executable, "-c", script, pair.base, pair.post, str(cache)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(WRITERS)]
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        assert int(out.split()[-1]) == 2 * 14  # every decomposition computed or loaded, none failed
    entries = os.listdir(cache)
    assert len(entries) == 2 * 14 and all(name.endswith(".svd") for name in entries)  # no temporary file left
    fresh = postsvd.compare(pair.base, pair.post, progress=False, num_threads=1)
    cached = postsvd.compare(pair.base, pair.post, progress=False, num_threads=1, cache=cache)
    assert cached.decompositions == {"computed": 0, "loaded": 2 * 14}
    pd.testing.assert_frame_equal(fresh.table, cached.table, check_exact=True)
