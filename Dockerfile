# syntax=docker/dockerfile:1
# Build: docker build -t poold .
# The binary is built by scripts/build.sh, the same script CI smoke-tests, so
# the container ships exactly what was tested.

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN bash scripts/build.sh /out/poold

# distroless static: CA certificates and tzdata, no shell, no libc.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/poold /poold
USER nonroot:nonroot
# 7070: gRPC (HTTPService, PoolService, PolicyService, health, reflection).
# 9090: /metrics, /healthz, /readyz.
EXPOSE 7070 9090
ENTRYPOINT ["/poold"]
