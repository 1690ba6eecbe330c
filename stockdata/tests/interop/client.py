"""Calls StockData with Python grpcio, a client nobody on this project wrote.

Generates the stubs from the project's stocks.proto with grpc_tools into a
temporary directory, then calls Get(1) and Get(0) and prints one JSON object:
the stock, the server-id header, and the code and message of the refusal.

usage: client.py PROTO_DIR HOST:PORT
"""

import importlib
import json
import sys
import tempfile

import grpc
from grpc_tools import protoc


def main() -> int:
    proto_dir, target = sys.argv[1], sys.argv[2]
    out_dir = tempfile.mkdtemp(prefix="stockdata-interop-")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            "stocks.proto",
        ]
    )
    if rc != 0:
        print(f"protoc failed with {rc}", file=sys.stderr)
        return 2
    sys.path.insert(0, out_dir)
    pb = importlib.import_module("stocks_pb2")
    rpc = importlib.import_module("stocks_pb2_grpc")

    with grpc.insecure_channel(target) as channel:
        stub = rpc.StocksStub(channel)
        response, call = stub.Get.with_call(pb.GetRequest(id=1), timeout=10)
        headers = dict(call.initial_metadata())
        try:
            stub.Get(pb.GetRequest(id=0), timeout=10)
            refusal = None
        except grpc.RpcError as err:
            refusal = {"code": err.code().name, "message": err.details()}

    print(
        json.dumps(
            {
                "stock": {
                    "id": response.stock.id,
                    "symbol": response.stock.symbol,
                    "name": response.stock.name,
                },
                "server_id": headers.get("server-id"),
                "refusal": refusal,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
