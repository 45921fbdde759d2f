#!/usr/bin/env python3
"""Runs a .tflite model in the official LiteRT runtime and compares its
outputs with the ones tract produced.

Usage: litert_check.py SPEC.json [TOLERANCE]

SPEC.json: {"model": "path.tflite", "input_shape": [..], "input": [floats],
            "outputs": [[floats], [floats]]}  (outputs in graph order)

Exits 0 and prints the largest absolute difference when every output is
within TOLERANCE (default 1e-5), 1 when one is not, 2 when LiteRT is missing.
Install the runtime with `pip install ai-edge-litert`.
"""
import json
import sys

try:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"litert unavailable: {e}", file=sys.stderr)
    sys.exit(2)


def main() -> int:
    spec = json.load(open(sys.argv[1]))
    tol = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-5
    interp = Interpreter(model_path=spec["model"])
    interp.allocate_tensors()
    inp = interp.get_input_details()
    if len(inp) != 1:
        print(f"expected one input, found {len(inp)}", file=sys.stderr)
        return 1
    x = np.asarray(spec["input"], dtype=np.float32).reshape(spec["input_shape"])
    interp.set_tensor(inp[0]["index"], x)
    interp.invoke()
    outs = interp.get_output_details()
    worst = 0.0
    for i, want in enumerate(spec["outputs"]):
        got = interp.get_tensor(outs[i]["index"]).reshape(-1)
        want = np.asarray(want, dtype=np.float32).reshape(-1)
        if got.shape != want.shape:
            print(f"output {i}: shape {got.shape} != {want.shape}", file=sys.stderr)
            return 1
        worst = max(worst, float(np.max(np.abs(got - want))))
    print(f"max_abs_diff {worst:.3e}")
    return 0 if worst <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
