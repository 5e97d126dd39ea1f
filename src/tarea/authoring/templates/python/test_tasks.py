"""Tests of {{name}}'s tasks, as plain functions and over the protocol.

Run them with ``python3 -m unittest`` in this directory (no Docker needed).
"""

import io
import json
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "vendor"))

import tasks  # noqa: E402
from tarea.runtime import TaskError, serve  # noqa: E402


def converse(*requests: dict) -> list[dict]:
    """Serve ``requests`` as tarea would send them; every line answered, ready first."""
    stdin = io.BytesIO(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
    stdout = io.BytesIO()
    serve(stdin=stdin, stdout=stdout)
    return [json.loads(line) for line in stdout.getvalue().splitlines()]


class TasksTest(unittest.TestCase):
    def test_saludar_greets(self) -> None:
        self.assertEqual(tasks.saludar("Ana", veces=2), "Hola, Ana Hola, Ana")

    def test_saludar_refuses_zero_times(self) -> None:
        with self.assertRaises(TaskError):
            tasks.saludar("Ana", veces=0)

    def test_over_the_protocol(self) -> None:
        ready, *answers = converse(
            {"jsonrpc": "2.0", "id": 1, "method": "saludar", "params": {"nombre": "Ana"}},
            {"jsonrpc": "2.0", "id": 2, "method": "saludar", "params": {"nombre": 5}},
            {"jsonrpc": "2.0", "id": 3, "method": "rpc.discover"},
        )
        self.assertEqual(ready["method"], "ready")
        self.assertIn("saludar", ready["params"]["functions"])
        results = {a["id"]: a for a in answers if "id" in a}
        self.assertEqual(results[1]["result"], "Hola, Ana")
        self.assertEqual(results[2]["error"]["code"], -32602)
        methods = {m["name"]: m for m in results[3]["result"]["methods"]}
        self.assertEqual(methods["saludar"]["params"][0]["schema"], {"type": "string"})


if __name__ == "__main__":
    unittest.main()
