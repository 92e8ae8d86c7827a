"""A Python caller of poold, with Debian's python3-grpcio and nothing else.

It needs no generated stubs: the message classes come from the descriptor
set poold's build commits (server/apidescriptors.binpb, made by buf from
api/), and the calls are made by method name. It runs one request through
the pool twice and prints its timing (the second reuses the connection),
then one that the egress rules deny, with the error's code and reason.

Usage: python3 client.py [poold address] [upstream URL] [descriptor set]
"""

import os
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

HERE = os.path.dirname(os.path.abspath(__file__))
ADDRESS = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7070"
UPSTREAM = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8080/from-python"
DESCRIPTORS = sys.argv[3] if len(sys.argv) > 3 else os.path.join(HERE, "..", "..", "server", "apidescriptors.binpb")


def load_pool(path):
    """Builds a descriptor pool from poold's descriptor set, plus the
    google.rpc.ErrorInfo message that details errors (Debian ships no
    googleapis-common-protos for Python)."""
    files = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as f:
        files.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in files.file:
        pool.Add(fd)
    details = descriptor_pb2.FileDescriptorProto(name="poold_example/error_info.proto", package="google.rpc", syntax="proto3")
    info = details.message_type.add(name="ErrorInfo")
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    info.field.add(name="reason", number=1, type=string, label=optional)
    info.field.add(name="domain", number=2, type=string, label=optional)
    pool.Add(details)
    return pool


POOL = load_pool(DESCRIPTORS)


def message(name):
    desc = POOL.FindMessageTypeByName(name)
    try:
        return message_factory.GetMessageClass(desc)
    except AttributeError:  # protobuf before 4.22
        return message_factory.MessageFactory(POOL).GetPrototype(desc)


DoRequest = message("poold.v1.DoRequest")
DoResponse = message("poold.v1.DoResponse")
Status = message("google.rpc.Status")
ErrorInfo = message("google.rpc.ErrorInfo")


def reason(err):
    """The ErrorInfo reason of a failed call, from its status details."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            st = Status.FromString(value)
            for detail in st.details:
                if detail.type_url.endswith("/google.rpc.ErrorInfo"):
                    return ErrorInfo.FromString(detail.value).reason
    return ""


def main():
    with grpc.insecure_channel(ADDRESS) as channel:
        do = channel.unary_unary(
            "/poold.v1.HTTPService/Do",
            request_serializer=DoRequest.SerializeToString,
            response_deserializer=DoResponse.FromString,
        )
        for attempt in (1, 2):
            resp = do(DoRequest(method="POST", url=UPSTREAM, body=b"hello from python"), timeout=10)
            t = resp.timing
            print(f"Do {attempt}: {resp.status_code} {resp.protocol} connection {t.connection_id} "
                  f"reused={t.reused} total={t.total.ToTimedelta().total_seconds() * 1000:.2f}ms")
            if resp.status_code != 200 or b"hello from python" not in resp.body:
                raise SystemExit(f"unexpected response: {resp.status_code} {resp.body!r}")
            if attempt == 2 and not t.reused:
                raise SystemExit("the second request did not reuse the pooled connection")
        try:
            do(DoRequest(url="http://169.254.169.254/latest/meta-data/"), timeout=10)
        except grpc.RpcError as err:
            print(f"denied: {err.code().name} {reason(err)}: {err.details()}")
            if err.code() != grpc.StatusCode.PERMISSION_DENIED or reason(err) != "EGRESS_DENIED":
                raise SystemExit("the metadata address was not denied as documented")
        else:
            raise SystemExit("the metadata address was not denied")


if __name__ == "__main__":
    main()
