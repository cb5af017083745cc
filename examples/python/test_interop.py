"""Interop checks run by scripts/interop: a real streamscore server, the official
Python clients.

- tritonclient.grpc and tritonclient.http: is_server_live, get_model_metadata("fraud")
  and infer with entity-id BYTES inputs and an FP64 amount; each probability equals the
  native Score answer for the same payment to 1e-12, and a batch of 100 equals 100
  single calls;
- the checkout client on the native API (stubs generated from proto/ by grpcio-tools).

    python test_interop.py --server target/debug/streamscore

starts the server on free loopback ports with a fresh data directory, and stops it at
the end, whatever happens.
"""

import argparse
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import streamscore_client  # noqa: E402
import triton_fraud  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`streamscore serve` on free loopback ports, until stopped."""

    def __init__(self, binary):
        self.data = tempfile.TemporaryDirectory(prefix="streamscore-interop-")
        self.grpc = f"127.0.0.1:{free_port()}"
        self.http = f"127.0.0.1:{free_port()}"
        env = dict(
            os.environ,
            RUST_LOG="info",
            STREAMSCORE__METRICS__LISTEN="127.0.0.1:0",
            STREAMSCORE__HTTP__LISTEN=self.http,
        )
        self.process = subprocess.Popen(
            [binary, "serve", "--listen", self.grpc, "--data-dir", self.data.name],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log = []
        ready = threading.Event()

        def drain():
            for line in self.process.stderr:
                self.log.append(line)
                if "streamscore listening" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(60) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(self.log))

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.data.cleanup()


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def run(server):
    checkout = streamscore_client.Checkout(server.grpc)
    now = int(time.time() * 1000)
    # Two days of ordinary shopping: 40 users, each on their own card, 10 payments each.
    history = [
        checkout.payment(f"u{i % 40}", f"c{i % 40}", 5.0 + (i % 23) * 3.5, now - 172_800_000 + i * 430_000, f"h{i}")
        for i in range(400)
    ]
    ack = checkout.send(history)
    check(ack.accepted == len(history), f"history accepted: {ack}")
    at = now - 1_000
    # Their next payments, a few on another user's card.
    rows = [(f"u{i % 40}", f"c{(i if i % 10 else i * 3) % 40}", 3.0 + i * 2.75) for i in range(100)]
    native = [checkout.score(u, c, a, at) for u, c, a in rows]
    check(len({round(p, 9) for p, _, _ in native}) > 10, f"the payments score differently: {native[:5]}")

    for name, module, client in [
        ("grpc", grpcclient, grpcclient.InferenceServerClient(server.grpc)),
        ("http", httpclient, httpclient.InferenceServerClient(server.http)),
    ]:
        check(client.is_server_live(), f"{name}: live")
        check(client.is_model_ready("fraud"), f"{name}: fraud ready")
        metadata = client.get_model_metadata("fraud")
        inputs = metadata["inputs"] if isinstance(metadata, dict) else [
            {"name": i.name, "datatype": i.datatype, "shape": list(i.shape)} for i in metadata.inputs
        ]
        by_name = {i["name"]: i for i in inputs}
        check(by_name["user"]["datatype"] == "BYTES", f"{name}: user is BYTES: {inputs}")
        check(by_name["amount"]["datatype"] == "FP64", f"{name}: amount is FP64: {inputs}")
        check([int(d) for d in by_name["amount"]["shape"]] == [-1], f"{name}: amount shape: {inputs}")

        users, cards, amounts = zip(*rows)
        batch, decisions = triton_fraud.score(client, module, users, cards, amounts, at)
        check(len(batch) == 100, f"{name}: 100 probabilities")
        for i, (u, c, a) in enumerate(rows):
            single, single_decision = triton_fraud.score(client, module, [u], [c], [a], at)
            expected, decision, _ = native[i]
            check(abs(single[0] - expected) <= 1e-12, f"{name} row {i}: {single[0]} alone, native {expected}")
            check(abs(batch[i] - expected) <= 1e-12, f"{name} row {i}: {batch[i]} in the batch, native {expected}")
            check(decision == "DECISION_" + decisions[i].upper(), f"{name} row {i}: {decisions[i]} vs {decision}")
            check(single_decision == [decisions[i]], f"{name} row {i}: decision alone")

        # A bad tensor: a clear error naming it.
        bad = module.InferInput("amount", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"12"], dtype=np.object_))
        user = module.InferInput("user", [1], "BYTES")
        user.set_data_from_numpy(np.array([b"u1"], dtype=np.object_))
        try:
            client.infer("fraud", [user, bad])
        except Exception as error:  # tritonclient raises its own InferenceServerException
            check("amount" in str(error) and "FP64" in str(error), f"{name}: {error}")
        else:
            raise AssertionError(f"{name}: a BYTES amount was accepted")
        print(f"interop {name}: live, metadata, 100 payments alone and batched equal native Score")


def reflection_only(server):
    """What grpcurl 1.8 does with no proto file, with grpcio-reflection's client, which
    (like grpcurl 1.8.x) speaks only reflection v1alpha: list the services, load the
    descriptors of Scoring from the server, build a ScoreRequest from them, call Score."""
    import grpc
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    channel = grpc.insecure_channel(server.grpc)
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    for expected in ["streamscore.v1.Scoring", "inference.GRPCInferenceService", "grpc.health.v1.Health"]:
        check(expected in services, f"reflection lists {expected}: {sorted(services)}")
    pool = descriptor_pool.DescriptorPool(database)
    score = pool.FindServiceByName("streamscore.v1.Scoring").FindMethodByName("Score")
    request_class = message_factory.GetMessageClass(score.input_type)
    response_class = message_factory.GetMessageClass(score.output_type)
    request = json_format.ParseDict(
        {"model": "fraud", "event": {"entities": {"user": "u1", "card": "c1"}, "numbers": {"amount": 42.0}}},
        request_class(),
    )
    call = channel.unary_unary(
        "/streamscore.v1.Scoring/Score",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    response = json_format.MessageToDict(call(request))
    check(0.0 <= response.get("score", -1) <= 1.0 and response.get("model") == "fraud", f"Score by reflection: {response}")
    print(f"reflection v1alpha: {len(services)} services listed, Score called with no proto file: {response['decision']}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="the streamscore binary")
    args = parser.parse_args()
    server = Server(args.server)
    try:
        run(server)
        reflection_only(server)
    except BaseException:
        print("".join(server.log[-40:]), file=sys.stderr)
        raise
    finally:
        server.stop()
    print("interop: all checks passed")


if __name__ == "__main__":
    main()
