"""A partition read from a file (docs/data.md §6): every format round-trips, bad files stop with
one line naming --partition_file, a malicious pickle runs nothing, and indices written in the
IDX files' order reach the clients as those very examples (a small prepared copy here; the real
Fashion-MNIST where Debian's files and the prepared cache are present)."""

import doctest
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from spark_tpu import checkpoint, data, simulator
from spark_tpu.data import read_partition_file, source_to_cache
from spark_tpu.simulator import refuse_unused
from test_data_prepare import NUM_TRAIN, make_idx_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = [[5, 1, 9], [2], [0, 3, 4, 7], [8, 6]]  # in file order; clients may differ in size
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


def _lists(clients):
    return [np.asarray(ix).tolist() for ix in clients]


def _padded(clients):
    table = np.full((len(clients), max(map(len, clients))), -1, dtype=np.int64)
    for q, ix in enumerate(clients):
        table[q, : len(ix)] = ix
    return table


# ---------------------------------------------------------------------------------------------
# Formats.


def _write(path, kind, clients):
    """Writes ``clients`` to ``path`` in the format ``kind``; returns the path as str."""
    if kind == "json-list":
        path.write_text(json.dumps(clients))
    elif kind == "json-dict":  # keys out of order, as strings: read by id, not by position
        path.write_text(json.dumps({str(q): ix for q, ix in reversed(list(enumerate(clients)))}))
    elif kind == "npy":
        np.save(path, _padded(clients))
    elif kind == "npz":
        np.savez(path, *[np.asarray(ix, np.int32) for ix in clients])
    elif kind.startswith("pkl-dict"):  # FedML's net_dataidx_map: {client: np.array}
        obj = {q: np.asarray(ix) for q, ix in enumerate(clients)}
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=int(kind[-1]))
    elif kind == "pkl-list":
        with open(path, "wb") as f:
            pickle.dump([list(ix) for ix in clients], f)
    elif kind == "pkl-numpy-keys":  # np.int64 keys (np.unique's) and uint16 arrays
        obj = {np.int64(q): np.asarray(ix, np.uint16) for q, ix in enumerate(clients)}
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    return str(path)


KINDS = {
    "json-list": "json", "json-dict": "json", "npy": "npy", "npz": "npz", "pkl-dict2": "pkl",
    "pkl-dict4": "pickle", "pkl-dict5": "pkl", "pkl-list": "pkl", "pkl-numpy-keys": "pkl",
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_format_round_trips(tmp_path, kind):
    path = _write(tmp_path / f"split.{KINDS[kind]}", kind, CLIENTS)
    got = read_partition_file(path)
    assert all(ix.dtype == np.int64 for ix in got)
    assert _lists(got) == CLIENTS


def test_npz_arrays_are_ordered_by_their_number_not_their_name(tmp_path):
    clients = [[q] for q in range(12)]  # arr_10 and arr_11 sort before arr_2 as text
    np.savez(tmp_path / "a.npz", *[np.array(ix) for ix in clients])
    assert _lists(read_partition_file(tmp_path / "a.npz")) == clients
    np.savez(tmp_path / "b.npz", **{f"client_{q}": np.array(ix) for q, ix in enumerate(clients)})
    assert _lists(read_partition_file(tmp_path / "b.npz")) == clients


def test_numpy_1_pickle_names_load_on_either_numpy(tmp_path):
    """numpy 1.x writes numpy.core.multiarray, numpy 2.x numpy._core.multiarray: both load (and
    no deprecated numpy.core import: the suite turns its warning into an error)."""
    raw = pickle.dumps({0: np.array([3, 1]), 1: np.array([2])}, protocol=2)
    for new, old in ((b"numpy._core.", b"numpy.core."), (b"numpy.core.", b"numpy._core.")):
        path = tmp_path / "old.pkl"
        path.write_bytes(raw.replace(new, old))
        assert _lists(read_partition_file(path)) == [[3, 1], [2]]


# ---------------------------------------------------------------------------------------------
# Untrusted pickles.


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalsCode:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("where", ["top", "value", "inside-list"])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, where):
    marker = tmp_path / "pwned_x"
    evil = _RunsCode(marker)
    obj = {"top": evil, "value": {0: evil}, "inside-list": [[1, 2], [3, evil]]}[where]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError) as e:
        read_partition_file(path)
    text = str(e.value)
    assert text.startswith(f"--partition_file={path}: refused to load the global ")
    assert "system" in text and "\n" not in text
    assert not marker.exists()


def test_builtins_and_other_numpy_globals_are_refused(tmp_path):
    path = tmp_path / "eval.pickle"
    path.write_bytes(pickle.dumps([_EvalsCode()]))
    with pytest.raises(ValueError, match="refused to load the global builtins.eval"):
        read_partition_file(path)
    # A numpy global that is not one of the array-reconstruction ones.
    path.write_bytes(pickle.dumps([np.load]))
    with pytest.raises(ValueError, match="refused to load the global numpy.*load"):
        read_partition_file(path)
    # _codecs.encode is admitted for protocol 0-2 bytes, in latin-1 only.
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(ValueError, match="refused _codecs.encode with encoding 'rot13'"):
        read_partition_file(path)


def test_the_module_examples_run():
    from spark_tpu.data import _partition_file

    assert doctest.testmod(_partition_file, raise_on_error=False).failed == 0


def test_a_pickled_float_or_object_array_is_not_an_index_list(tmp_path):
    path = tmp_path / "f.pkl"
    path.write_bytes(pickle.dumps({0: np.array([1.0, 2.0])}))
    with pytest.raises(ValueError, match="client 0: expected a 1-D integer array, got float64"):
        read_partition_file(path)


# ---------------------------------------------------------------------------------------------
# Bad files: one line each, naming the flag.


def _savez_as(path, *arrays):
    with open(path, "wb") as f:  # np.savez would append .npz to a path
        np.savez(f, *arrays)


def _json(clients):
    return lambda p: p.write_text(json.dumps(clients))


BAD = {
    "unknown extension": ("split.txt", lambda p: p.write_text("[[1]]"),
                          "unknown extension '.txt'; use one of .json, .npy, .npz, .pkl"),
    "missing": ("absent.json", None, "no such file"),
    "a folder": ("dir.json", lambda p: p.mkdir(), "is a folder, not a file"),
    "not json": ("split.json", lambda p: p.write_text("[[1, 2"), "not valid JSON"),
    "not a list": ("split.json", lambda p: p.write_text('"abc"'),
                   "expected a list of per-client index lists or a dict"),
    "float index": ("split.json", _json([[1, 2.5]]), "client 0: 2.5 is not an integer index"),
    "bool index": ("split.json", _json([[True]]), "client 0: True is not an integer index"),
    "negative": ("split.json", _json([[1], [-3, 2]]), "client 1: index -3 is negative"),
    "empty client": ("split.json", _json([[1], []]),
                     "client 1 holds no examples; every client needs at least one"),
    "no clients": ("split.json", _json([]), "holds no clients"),
    "duplicate": ("split.json", _json([[4, 1, 4]]),
                  "client 0 lists index 4 2 times; a client's indices must be distinct"),
    "id gap": ("split.json", lambda p: p.write_text(json.dumps({"0": [1], "2": [2]})),
               "client ids must be 0 .. 1 for its 2 clients; 1 is missing"),
    "id not a number": ("split.json", lambda p: p.write_text(json.dumps({"alice": [1]})),
                        "key 'alice' is not a client id"),
    "npy 1-D": ("split.npy", lambda p: np.save(p, np.arange(4)),
                "a .npy partition must be a 2-D integer array [clients, n_max] padded with -1"),
    "npy float": ("split.npy", lambda p: np.save(p, np.ones((2, 2))), "got float64 (2, 2)"),
    "npy inner padding": ("split.npy", lambda p: np.save(p, np.array([[1, -1, 2]])),
                          "client 0: -1 padding before column 1's index"),
    "npy objects": ("split.npy",
                    lambda p: np.save(p, np.array([[1], [1, 2]], dtype=object)),
                    "holds Python objects, which are not loaded from .npy/.npz"),
    "npy is npz": ("split.npy", lambda p: _savez_as(p, np.arange(2)),
                   "is an .npz archive; name it .npz"),
    "npz name": ("split.npz", lambda p: np.savez(p, first=np.arange(2)),
                 "array name 'first' ends in no client id"),
    "npz same id": ("split.npz", lambda p: np.savez(p, a1=np.arange(2), b1=np.arange(2)),
                    "arrays 'a1' and 'b1' both name client 1"),
    "truncated pickle": ("split.pkl", lambda p: p.write_bytes(pickle.dumps([[1, 2]])[:-3]),
                         "not a readable pickle"),
    "garbage npz": ("split.npz", lambda p: p.write_bytes(b"PK\x03\x04garbage"),
                    "not a readable .npz file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_stop_with_one_line(tmp_path, case):
    name, write, message = BAD[case]
    path = tmp_path / name
    if write is not None:
        write(path)
    with pytest.raises(ValueError) as e:
        read_partition_file(path)
    text = str(e.value)
    assert text.startswith(f"--partition_file={path}: "), text
    assert message in text and "\n" not in text, text


def test_client_count_and_range_are_checked_against_the_run(tmp_path):
    path = _write(tmp_path / "s.json", "json-list", CLIENTS)
    labels = np.arange(10, dtype=np.int32) % 3
    with pytest.raises(ValueError) as e:
        data.partition(labels, 6, method="file", seed=0, path=path)
    assert str(e.value) == (
        f"--partition_file={path}: holds 4 clients but --clients=6; set --clients=4.")
    with pytest.raises(ValueError) as e:
        data.partition(labels[:9], 4, method="file", seed=0, path=path, dataset="digits")
    assert "client 0: index 9 is out of range for the 9 training examples of digits" in str(e.value)
    with pytest.raises(ValueError, match="--partition=file needs --partition_file=PATH"):
        data.partition(labels, 4, method="file", seed=0)


def test_unknown_source_order_is_refused():
    with pytest.raises(ValueError) as e:
        source_to_cache("svhn_cropped", 10)
    text = str(e.value)
    assert text.startswith("--partition_file with --dataset=svhn_cropped: spark_tpu does not know")
    assert "fashion_mnist" in text and "\n" not in text
    assert source_to_cache("digits", 10) is None and source_to_cache("two_moons", 10) is None


def test_partition_and_its_summary(tmp_path):
    """Generated data (digits): indices are positions in the train arrays, unchanged."""
    path = _write(tmp_path / "s.json", "json-list", CLIENTS)
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 0], dtype=np.int32)
    part = data.partition(labels, 4, method="file", seed=0, path=path, dataset="digits")
    assert part.sizes.tolist() == [3, 1, 4, 2]
    assert [part.indices[q, : part.sizes[q]].tolist() for q in range(4)] == CLIENTS
    assert (part.mask.sum(1) == part.sizes).all()
    summary = data.partition_summary(part, labels, 3)
    assert summary["clients"] == 4 and summary["n_max"] == 4
    assert summary["distinct_examples"] == 10
    assert summary["sizes"] == {"min": 1.0, "mean": 2.5, "max": 4.0}
    counts = data.client_class_counts(part, labels, 3)
    assert counts.tolist() == [[2, 0, 1], [0, 1, 0], [1, 2, 1], [1, 0, 1]]


# ---------------------------------------------------------------------------------------------
# Index order: source (IDX) order in the file, cache order in the loaded arrays.


def _class_split(idx_labels, clients, per_client=None):
    """Client q gets the IDX-order indices of class q (the first ``per_client`` of them)."""
    return [np.flatnonzero(idx_labels == q)[:per_client].tolist() for q in range(clients)]


def test_idx_order_reaches_the_clients_on_a_prepared_copy(tmp_path):
    """IDX files written here, prepared into a tfds cache (which reorders them): the examples
    the clients get are the IDX files' examples at the file's indices, image for image."""
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    images, labels = make_idx_dir(idx_dir)["train"]  # distinct random images, labels i % 10
    ds = data.load_dataset("fashion_mnist", data_dir=tmp_path / "cache", idx_dir=idx_dir)
    assert not np.array_equal(ds.train_y, labels)  # the cache's order is another one
    clients = _class_split(labels, 4)
    clients[3] = [39, 0, 17]  # any order, any classes
    path = _write(tmp_path / "split.json", "json-list", clients)
    part = data.partition(ds.train_y, 4, method="file", seed=0, path=path, dataset=ds.name)
    for q, ix in enumerate(clients):
        got = part.indices[q, : part.sizes[q]]
        np.testing.assert_array_equal(ds.train_x[got, ..., 0], images[ix])
        np.testing.assert_array_equal(ds.train_y[got], labels[ix])
    positions = source_to_cache("fashion_mnist", NUM_TRAIN)
    assert sorted(positions.tolist()) == list(range(NUM_TRAIN))


def _default_cache_ready():
    return bool(data._prepare.version_dirs("fashion_mnist", data.default_data_dir()))


@pytest.mark.slow  # loading the prepared cache decodes 70k PNGs: about 18 s of CPU
@pytest.mark.skipif(not os.path.isdir(DEBIAN_DIR),
                    reason=f"{DEBIAN_DIR} absent: `apt-get install dataset-fashion-mnist`")
@pytest.mark.skipif(not _default_cache_ready(),
                    reason="Fashion-MNIST not prepared: python -m spark_tpu.data.prepare")
def test_fashion_mnist_idx_order_reaches_the_clients(tmp_path):
    """The key test: a split written in IDX order (client q: every IDX index of class q) loads
    through the simulator's path; the clients' labels and images are the IDX files' ones."""
    idx_labels = data.read_idx(os.path.join(DEBIAN_DIR, "train-labels-idx1-ubyte.gz"))
    idx_images = data.read_idx(os.path.join(DEBIAN_DIR, "train-images-idx3-ubyte.gz"))
    clients = _class_split(idx_labels, 10)
    path = _write(tmp_path / "by_class.json", "json-list", clients)
    ds = data.load_dataset("fashion_mnist", prepare=False)
    part = data.partition(ds.train_y, 10, method="file", seed=0, path=path, dataset=ds.name)
    for q, ix in enumerate(clients):
        got = part.indices[q, : part.sizes[q]]
        np.testing.assert_array_equal(ds.train_y[got], idx_labels[ix])
        np.testing.assert_array_equal(ds.train_x[got, ..., 0], idx_images[ix])
    summary = data.partition_summary(part, ds.train_y, ds.num_classes)
    assert summary["classes_per_client"] == {"min": 1.0, "mean": 1.0, "max": 1.0}
    assert summary["sizes"] == {"min": 6000.0, "mean": 6000.0, "max": 6000.0}
    # Without the translation the same file would mix classes: the orders really differ.
    assert (ds.train_y[clients[0]] != 0).mean() > 0.5


# ---------------------------------------------------------------------------------------------
# Flags, checkpoints and a run.

TINY = dict(dataset="digits", clients=4, rounds=2, degree=3, graph_pool=4,
            local_eval_samples=50, horizons=(4, 8), devices=1, algorithm="dgd", eval_every=2)


def test_config_needs_both_flags_together(tmp_path):
    with pytest.raises(ValueError) as e:
        simulator.Config(partition="file")
    assert str(e.value).startswith("--partition=file needs --partition_file=PATH")
    with pytest.raises(ValueError) as e:
        simulator.Config(partition_file="split.json")
    assert str(e.value) == (
        "--partition_file=split.json is read only with --partition=file, not "
        "--partition=dirichlet: add --partition=file or remove --partition_file.")
    simulator.Config(partition="file", partition_file="split.json")  # accepted


@pytest.mark.parametrize("flag", ["alpha", "shards_per_client", "samples_per_client"])
def test_options_of_drawn_partitions_are_refused_with_a_file(flag):
    cfg = simulator.Config(partition="file", partition_file="split.json")
    with pytest.raises(ValueError) as e:
        refuse_unused(cfg, [flag])
    assert str(e.value) == (f"--{flag} does nothing with --partition=file: --partition_file fixes "
                            "which examples each client holds; remove it.")
    refuse_unused(simulator.Config(partition="shards"), [flag])  # still fine elsewhere


def test_partition_file_is_a_checkpoint_state_flag():
    assert "partition_file" in checkpoint.STATE_FLAGS
    saved = simulator.Config(partition="file", partition_file="a.json").to_dict()
    now = simulator.Config(partition="file", partition_file="b.json").to_dict()
    state, trajectory = checkpoint._manager.flag_differences(saved, now)
    assert state == ["--partition_file: saved 'a.json', now 'b.json'"] and trajectory == []


def test_a_bad_file_fails_before_the_data_loads(tmp_path, monkeypatch):
    def load_dataset(*args, **kwargs):
        raise AssertionError("the data loaded before the partition file was checked")

    monkeypatch.setattr(simulator._build.data, "load_dataset", load_dataset)
    path = _write(tmp_path / "s.json", "json-list", CLIENTS[:3])
    cfg = simulator.Config(**TINY, partition="file", partition_file=path)
    with pytest.raises(ValueError, match="holds 3 clients but --clients=4; set --clients=3"):
        simulator.run(cfg, str(tmp_path / "out"), progress=False)


@pytest.mark.slow  # compiling a round: 20-30 s on the loaded 2-core machine
def test_two_rounds_on_a_file_partition(tmp_path):
    clients = [list(range(q, 1000, 7))[:40 + 10 * q] for q in range(4)]  # sizes 40..70
    path = _write(tmp_path / "s.npz", "npz", clients)
    cfg = simulator.Config(**TINY, partition="file", partition_file=path)
    summary = simulator.run(cfg, str(tmp_path / "out"), progress=False)
    assert summary["partition"]["sizes"] == {"min": 40.0, "mean": 55.0, "max": 70.0}
    assert summary["partition"]["n_max"] == 70
    assert summary["config"]["partition_file"] == path
    assert summary["final"]["round"] == 2
    ds = data.load_dataset("digits")  # the arrays the run placed, rebuilt as _build does
    part = data.partition(ds.train_y, 4, method="file", seed=0, path=path, dataset=ds.name)
    arrays = data.federated_arrays(ds, part)
    for q, ix in enumerate(clients):
        np.testing.assert_array_equal(arrays.y[q, : len(ix)], ds.train_y[ix])
        assert arrays.mask[q, : len(ix)].all() and not arrays.mask[q, len(ix):].any()


@pytest.mark.slow  # a launcher subprocess
def test_launcher_runs_a_file_partition_and_refuses_alpha_with_it(tmp_path):
    path = _write(tmp_path / "s.json", "json-list", [list(range(q, 400, 4)) for q in range(4)])
    args = ["--dataset=digits", "--clients=4", "--rounds=2", "--degree=3", "--graph_pool=4",
            "--local_eval_samples=50", "--devices=2", "--algorithm=dgd", "--partition=file",
            f"--partition_file={path}", f"--output_dir={tmp_path / 'run'}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")

    def launch(*extra):
        return subprocess.run([sys.executable, "-m", "launch_tpu.main", *args, *extra], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300, check=False)

    refused = launch("--alpha=0.5")
    assert refused.returncode != 0
    assert "--alpha does nothing with --partition=file" in refused.stderr
    assert "Traceback" not in refused.stderr
    ran = launch()
    assert ran.returncode == 0, ran.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["partition"]["sizes"] == {"min": 100.0, "mean": 100.0, "max": 100.0}
