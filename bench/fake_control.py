"""A fake control plane for bench/intercept.sh, on the mesh's wire contract
(proto/mesh.proto): `Destination.Resolve` names one address as a service,
and `Destination.Get` streams that service's fixed endpoints.

    python fake_control.py LISTEN SERVICE_ADDR SERVICE_NAME ENDPOINT...

Stubs are generated from proto/mesh.proto at start (grpcio-tools).
"""
import os
import sys
import tempfile
import threading
from concurrent import futures

import grpc
from grpc_tools import protoc

here = os.path.dirname(os.path.abspath(__file__))
proto_dir = os.path.join(here, "..", "proto", "proto")
out = tempfile.mkdtemp(prefix="mesh-fake-control-")
if protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                os.path.join(proto_dir, "mesh.proto")]) != 0:
    sys.exit("fake_control.py: cannot generate the stubs from mesh.proto")
sys.path.insert(0, out)
import mesh_pb2  # noqa: E402
import mesh_pb2_grpc  # noqa: E402

listen, service_addr, service_name, *endpoints = sys.argv[1:]


class Destination(mesh_pb2_grpc.DestinationServicer):
    def Resolve(self, request, context):
        asked = f"{request.ip}:{request.port}"
        return mesh_pb2.ResolveResponse(service=service_name if asked == service_addr else "")

    def Get(self, request, context):
        if request.service != service_name:
            yield mesh_pb2.Update(no_endpoints=mesh_pb2.NoEndpoints(exists=False))
        else:
            yield mesh_pb2.Update(add=mesh_pb2.EndpointSet(endpoints=[
                mesh_pb2.Endpoint(addr=e, instance=e) for e in endpoints]))
        done = threading.Event()
        context.add_callback(done.set)
        done.wait()


server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
mesh_pb2_grpc.add_DestinationServicer_to_server(Destination(), server)
server.add_insecure_port(listen)
server.start()
print("serving", flush=True)
server.wait_for_termination()
