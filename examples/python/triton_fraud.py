"""Scoring payments with tritonclient over the Open Inference Protocol (KServe V2).

    python triton_fraud.py --grpc 127.0.0.1:50051 --http 127.0.0.1:8080

streamscore's fraud model takes one tensor per payment field: BYTES ids named after
entity types (user, card, ...) and FP64 amounts, one row per payment.
"""

import argparse

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def inputs(module, users, cards, amounts):
    """The fraud model's input tensors for rows of (user, card, amount)."""
    tensors = []
    for name, values, datatype in [
        ("user", np.array([u.encode() for u in users], dtype=np.object_), "BYTES"),
        ("card", np.array([c.encode() for c in cards], dtype=np.object_), "BYTES"),
        ("amount", np.array(amounts, dtype=np.float64), "FP64"),
    ]:
        tensor = module.InferInput(name, [len(values)], datatype)
        tensor.set_data_from_numpy(values)
        tensors.append(tensor)
    return tensors


def score(client, module, users, cards, amounts, time_ms=None):
    """(probabilities, decisions) for the rows, scored as of `time_ms` (default now)."""
    parameters = {"event_time_ms": int(time_ms)} if time_ms else None
    result = client.infer("fraud", inputs(module, users, cards, amounts), parameters=parameters)
    decisions = [d.decode() if isinstance(d, bytes) else d for d in result.as_numpy("decision")]
    return result.as_numpy("probability"), decisions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", default="127.0.0.1:50051")
    parser.add_argument("--http", default="127.0.0.1:8080")
    args = parser.parse_args()
    for module, client in [
        (grpcclient, grpcclient.InferenceServerClient(args.grpc)),
        (httpclient, httpclient.InferenceServerClient(args.http)),
    ]:
        print(module.__name__, "live:", client.is_server_live())
        metadata = client.get_model_metadata("fraud")
        print("fraud inputs:", metadata)
        probabilities, decisions = score(client, module, ["u1", "u2"], ["c1", "c2"], [25.0, 980.0])
        for p, d in zip(probabilities, decisions):
            print(f"  {d}: {p:.6f}")


if __name__ == "__main__":
    main()
