"""The streaming ONNX scanner: malformed files, external-data escapes, memory."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from compression.pipeline import onnx_scan
from compression.pipeline.errors import InvalidModelError
from compression.pipeline.onnx_scan import normalise_location, scan_onnx, scan_onnx_stream
from tests.fixtures.tiny_models import build_big_onnx

REPO = Path(__file__).resolve().parents[2]


def external_tensor(name: str, location: str, n: int = 4) -> onnx.TensorProto:
    tensor = numpy_helper.from_array(np.zeros(n, np.float32), name)
    set_external_data(tensor, location, offset=0, length=4 * n)
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    return tensor


def model_with(
    initializers: list[onnx.TensorProto], nodes: tuple[onnx.NodeProto, ...] = ()
) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    body = list(nodes) or [helper.make_node("Identity", ["x"], ["y"])]
    graph = helper.make_graph(body, "g", [x], [out], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_it_scans_tiny_bert_onnx(tiny_onnx: Path) -> None:
    scan = scan_onnx(tiny_onnx)
    assert scan.ir_version == 8
    assert scan.producer_name == "tinyfleet-tests"
    assert scan.opset_imports == {"": 17}
    assert scan.external_locations == ()


def test_it_reports_external_data_locations(tiny_onnx_external: Path) -> None:
    scan = scan_onnx(tiny_onnx_external / "model.onnx", base_dir=tiny_onnx_external)
    assert scan.external_locations == ("model.onnx.data",)
    assert scan.external_tensors > 0
    size = (tiny_onnx_external / "model.onnx.data").stat().st_size
    assert scan.external_min_sizes["model.onnx.data"] == size


def test_it_knows_every_field_onnx_proto_defines() -> None:
    # If onnx adds a field, this fails instead of real uploads being refused.
    messages: dict[str, Any] = {
        "model": onnx.ModelProto,
        "graph": onnx.GraphProto,
        "tensor": onnx.TensorProto,
        "sparse": onnx.SparseTensorProto,
        "entry": onnx.StringStringEntryProto,
        "opset": onnx.OperatorSetIdProto,
        "node": onnx.NodeProto,
        "attr": onnx.AttributeProto,
        "function": onnx.FunctionProto,
        "training": onnx.TrainingInfoProto,
    }
    for kind, message in messages.items():
        numbers = {f.number for f in message.DESCRIPTOR.fields}
        assert set(onnx_scan._SCHEMA[kind]) == numbers, kind


def test_it_accepts_a_model_using_every_model_field(tmp_path: Path) -> None:
    model = model_with([numpy_helper.from_array(np.ones(4, np.float32), "w")])
    model.doc_string, model.domain, model.model_version = "doc", "ai.tinyfleet", 3
    helper.set_model_props(model, {"author": "alice"})
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(2, np.float32), "sv"),
        numpy_helper.from_array(np.array([0, 3], np.int64), "si"),
        [4],
    )
    model.graph.sparse_initializer.append(sparse)
    model.functions.append(
        helper.make_function(
            "local", "Double", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
            [helper.make_opsetid("", 17)],
        )
    )  # fmt: skip
    training = onnx.TrainingInfoProto()
    training.algorithm.CopyFrom(helper.make_graph([], "algo", [], []))
    model.training_info.append(training)
    model.configuration.add(name="cfg", num_devices=1)
    path = save(model, tmp_path / "full.onnx")
    scan = scan_onnx(path)
    assert scan.opset_imports == {"": 17}
    assert scan.ir_version == model.ir_version


@pytest.mark.parametrize("seed", range(8))
def test_it_rejects_random_bytes_named_onnx(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
        scan_onnx(path)


@pytest.mark.parametrize("content", [b"", b"hello world, not a model\n", b'{"graph": 1}'])
def test_it_rejects_text_and_empty_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(InvalidModelError):
        scan_onnx(path)


@pytest.mark.parametrize("keep", [0.5, 0.9, -1])
def test_it_rejects_truncated_onnx(tmp_path: Path, tiny_onnx: Path, keep: float) -> None:
    data = tiny_onnx.read_bytes()
    cut = len(data) - 1 if keep == -1 else int(len(data) * keep)
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:cut])
    with pytest.raises(InvalidModelError, match="truncated"):
        scan_onnx(path)


def test_it_rejects_unknown_field_numbers(tmp_path: Path, tiny_onnx: Path) -> None:
    path = tmp_path / "extra.onnx"
    # Key varint for field 99, wire type 0 (0x98 0x06), then the value 1.
    path.write_bytes(tiny_onnx.read_bytes() + bytes([0x98, 0x06, 1]))
    with pytest.raises(InvalidModelError, match="field number 99"):
        scan_onnx(path)


def test_it_rejects_wrong_wire_types(tmp_path: Path) -> None:
    path = tmp_path / "wire.onnx"
    path.write_bytes(bytes([0x08, 8, 7 << 3 | 0, 1]))  # ir_version=8, graph as a varint
    with pytest.raises(InvalidModelError, match="wrong wire type"):
        scan_onnx(path)


def test_it_requires_a_graph(tmp_path: Path) -> None:
    path = tmp_path / "nograph.onnx"
    path.write_bytes(bytes([0x08, 8]))  # only ir_version = 8
    with pytest.raises(InvalidModelError, match="no graph"):
        scan_onnx(path)


@pytest.mark.parametrize(
    "location",
    ["../secret.bin", "/etc/passwd", "data/../../secret.bin", "C:\\data.bin", "..\\x.bin", ".."],
)
def test_it_rejects_external_data_outside_folder(tmp_path: Path, location: str) -> None:
    path = save(model_with([external_tensor("w", location)]), tmp_path / "m.onnx")
    with pytest.raises(InvalidModelError, match="external data location"):
        scan_onnx(path)


def test_it_rejects_escaping_external_data_hidden_in_a_subgraph(tmp_path: Path) -> None:
    # onnx.load_external_data_for_model also follows Constant attributes and
    # If/Loop subgraphs, so an escape there is as dangerous as in initializers.
    constant = helper.make_node("Constant", [], ["c"], value=external_tensor("c", "../../k"))
    branch = helper.make_graph([constant], "then", [], [helper.make_tensor_value_info("c", 1, [4])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    path = save(model_with([cond], (node,)), tmp_path / "m.onnx")
    with pytest.raises(InvalidModelError, match="outside the model's folder"):
        scan_onnx(path)


def test_it_normalises_harmless_locations() -> None:
    assert normalise_location("./weights/../model.data") == "model.data"
    assert normalise_location("sub/w.bin") == "sub/w.bin"


def test_it_rejects_symlinked_external_data_escaping_folder(tmp_path: Path) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(bytes(64))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").symlink_to(outside)
    path = save(model_with([external_tensor("w", "weights.bin")]), folder / "m.onnx")
    scan_onnx(path)  # string checks alone cannot see the link
    with pytest.raises(InvalidModelError, match="outside the model's folder through a link"):
        scan_onnx(path, base_dir=folder)


def test_it_accepts_symlinks_that_stay_inside(tmp_path: Path) -> None:
    (tmp_path / "real.bin").write_bytes(bytes(64))
    (tmp_path / "weights.bin").symlink_to(tmp_path / "real.bin")
    path = save(model_with([external_tensor("w", "weights.bin")]), tmp_path / "m.onnx")
    assert scan_onnx(path, base_dir=tmp_path).external_locations == ("weights.bin",)


def test_it_rejects_missing_or_short_external_data(tmp_path: Path) -> None:
    path = save(model_with([external_tensor("w", "weights.bin", n=16)]), tmp_path / "m.onnx")
    with pytest.raises(InvalidModelError, match="not in the upload"):
        scan_onnx(path, base_dir=tmp_path)
    (tmp_path / "weights.bin").write_bytes(bytes(10))
    with pytest.raises(InvalidModelError, match="shorter than the model says"):
        scan_onnx(path, base_dir=tmp_path)


def test_it_rejects_files_too_big_for_protobuf(tiny_onnx: Path) -> None:
    with pytest.raises(InvalidModelError, match="save_as_external_data"):
        scan_onnx(tiny_onnx, max_bytes=100)


@pytest.mark.parametrize("seed", range(30))
def test_it_only_ever_raises_invalid_model_on_corrupted_bytes(
    tmp_path: Path, tiny_onnx: Path, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    data = bytearray(tiny_onnx.read_bytes())
    for pos in rng.integers(0, len(data), 8):
        data[pos] = int(rng.integers(0, 256))
    path = tmp_path / "fuzz.onnx"
    path.write_bytes(bytes(data))
    with contextlib.suppress(InvalidModelError):
        scan_onnx(path)


def test_it_scans_a_big_file_in_constant_memory(tmp_path: Path) -> None:
    path = build_big_onnx(tmp_path / "big.onnx", 300 * 1024 * 1024)
    size = path.stat().st_size
    # Peak RSS is read from VmHWM, the high-water mark of this process's own
    # memory map: ru_maxrss on Linux keeps the forking pytest parent's peak.
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from compression.pipeline.onnx_scan import scan_onnx\n"
        "scan = scan_onnx(Path(sys.argv[1]))\n"
        "status = Path('/proc/self/status').read_text().splitlines()\n"
        "hwm = [int(x.split()[1]) * 1024 for x in status if x.startswith('VmHWM:')]\n"
        "print(json.dumps({'rss': hwm[0], 'ir': scan.ir_version}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True, text=True, check=True, env=env, cwd=REPO, timeout=120,
        )  # fmt: skip
    finally:
        path.unlink()  # pytest keeps recent tmp dirs; do not leave 300 MB behind
    result = json.loads(done.stdout)
    assert result["ir"] == 8
    # A bare interpreter is ~10-20 MB; reading the file would add 300 MB.
    assert result["rss"] < min(size // 5, 80 * 1024 * 1024), result


class ForwardOnly(io.BytesIO):
    """A stream that fails on any backward seek, like a cheap zip member would."""

    def seek(self, pos: int, whence: int = 0) -> int:
        assert whence == 0 and pos >= self.tell(), "backward seek"
        return super().seek(pos, whence)


def test_it_reads_streams_forward_only(tmp_path: Path) -> None:
    # A backward seek on a zip member restarts decompression from byte 0. Many
    # small tensors make fields straddle the reader's 64 KiB buffer boundaries.
    inits = [numpy_helper.from_array(np.full(4, i, np.float32), f"w{i}") for i in range(20_000)]
    data = model_with(inits).SerializeToString()
    assert len(data) > 500_000
    scan = scan_onnx_stream(ForwardOnly(data), len(data))
    assert scan.opset_imports == {"": 17}
