"""A checkout-style client on streamscore's native gRPC API (streamscore.v1).

The stubs are generated from the repository's proto/ with grpcio-tools into a
temporary directory on first use, so nothing generated is checked in.

    python streamscore_client.py --target 127.0.0.1:50051 --user u1 --card c1 --amount 129

prints the fraud decision for one payment, as a checkout would ask before charging.
"""

import argparse
import importlib
import pathlib
import sys
import tempfile

import grpc

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"


def stubs():
    """(messages, services) generated from proto/streamscore.proto."""
    out = pathlib.Path(tempfile.mkdtemp(prefix="streamscore-stubs-"))
    from grpc_tools import protoc

    result = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_DIR / "streamscore.proto"),
        ]
    )
    if result != 0:
        raise RuntimeError(f"protoc failed on {PROTO_DIR / 'streamscore.proto'}")
    sys.path.insert(0, str(out))
    return importlib.import_module("streamscore_pb2"), importlib.import_module("streamscore_pb2_grpc")


class Checkout:
    """Ingests shop events and asks for fraud decisions."""

    def __init__(self, target, token=None):
        self.pb, self.rpc = stubs()
        self.channel = grpc.insecure_channel(target)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.ingest = self.rpc.IngestStub(self.channel)
        self.scoring = self.rpc.ScoringStub(self.channel)

    def payment(self, user, card, amount, time_ms=0, event_id=""):
        return self.pb.Event(
            event_id=event_id,
            event_type="payment",
            event_time_ms=time_ms,
            entities={"user": user, "card": card},
            numbers={"amount": amount},
        )

    def send(self, events):
        """Ingests a batch; raises unless every event was accepted."""
        ack = self.ingest.IngestBatch(
            self.pb.IngestRequest(batch_id=1, events=events), metadata=self.metadata
        )
        if ack.refused:
            raise RuntimeError(f"events refused: {ack.refused}")
        return ack

    def score(self, user, card, amount, time_ms=0, model="fraud"):
        """The fraud answer for one payment: (probability, decision name, reasons)."""
        response = self.scoring.Score(
            self.pb.ScoreRequest(model=model, event=self.payment(user, card, amount, time_ms)),
            metadata=self.metadata,
        )
        decision = self.pb.Decision.Name(response.decision)
        return response.score, decision, list(response.reasons)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--token")
    parser.add_argument("--user", required=True)
    parser.add_argument("--card", required=True)
    parser.add_argument("--amount", type=float, required=True)
    args = parser.parse_args()
    checkout = Checkout(args.target, args.token)
    probability, decision, reasons = checkout.score(args.user, args.card, args.amount)
    print(f"{decision}: probability {probability:.6f}")
    for reason in reasons:
        print(f"  {reason.feature} = {reason.value} ({reason.contribution:+.3f})")


if __name__ == "__main__":
    main()
