"""The TFLite flatbuffer writer and reader (r2b.lce.tflite): what is written reads back."""

import numpy as np
import pytest

pytest.importorskip("flatbuffers", reason="r2b.lce needs the [lce] extra (flatbuffers)")

from r2b.lce import read
from r2b.lce.tflite import Graph, flexbuffer_map, serialize


def test_writer_reader_round_trip():
    g = Graph()
    x = g.tensor("x", (1, 4, 4, 2))
    w = g.const("w", np.arange(2 * 3 * 3 * 2, dtype=np.float32).reshape(2, 3, 3, 2))
    b = g.const("b", np.zeros(2))
    y = g.tensor("y", (1, 2, 2, 2))
    g.op("CONV_2D", [x, w, b], [y], "Conv2DOptions", padding=1, stride_w=2, stride_h=2)
    z = g.tensor("z", (1, 2, 2, 2), np.int32)
    g.op("LceQuantize", [y], [z], custom_options=None)
    g.op("MyOp", [z], [z], custom_options=flexbuffer_map({"b": 2, "a": 1}))
    g.inputs, g.outputs = [x], [z]
    r = read(serialize(g, "hello", {"k": b"v"}))
    assert r["description"] == "hello" and r["metadata"] == {"k": b"v"} and r["version"] == 3
    assert [op["code"] for op in r["ops"]] == ["CONV_2D", "LceQuantize", "MyOp"]
    assert r["ops"][0]["options"]["stride_h"] == 2 and r["ops"][0]["options"]["padding"] == 1
    assert r["ops"][0]["options"]["dilation_w_factor"] == 1  # the schema default
    assert r["ops"][2]["options"] == {"a": 1, "b": 2}
    np.testing.assert_array_equal(r["tensors"][1]["data"], g.tensors[1].data)
    assert r["tensors"][2]["data"] is not None and r["tensors"][0]["data"] is None
