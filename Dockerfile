# StockKube Mesh images: one target per binary, each FROM scratch with a
# static (musl) binary, the CA certificates, the health probe and a non-root
# user. Build them all with `docker/build.sh`, which compiles the binaries
# first and tags the images stockkube/NAME:dev (the names k8s/ and
# docker-compose.yml use). Flags are documented in each binary's --help and
# in docs/; every flag has an environment variable.

FROM scratch AS base
# etc/passwd, etc/group, etc/ssl/certs/ca-certificates.crt, usr/bin/mesh-probe
COPY target/docker/rootfs/ /
USER 65532:65532

# StockData: gRPC on :80 (STOCKDATA_LISTEN), server-id from STOCKDATA_SERVER_ID
# or the host name.
FROM base AS stockdata
COPY target/docker/bin/stockdata /usr/bin/stockdata
ENV STOCKDATA_LISTEN=0.0.0.0:80
EXPOSE 80
ENTRYPOINT ["/usr/bin/stockdata"]

# StockWeb: HTTP on :80 (STOCKWEB_LISTEN), calls STOCKDATA_ADDRESS.
FROM base AS stockweb
COPY target/docker/bin/stockweb /usr/bin/stockweb
COPY stockweb/assets/ /usr/share/stockweb/assets/
ENV STOCKWEB_LISTEN=0.0.0.0:80 STOCKWEB_ASSETS_DIR=/usr/share/stockweb/assets
EXPOSE 80
ENTRYPOINT ["/usr/bin/stockweb"]

# The sidecar: MESH_PROXY_* (docs/proxy.md). It runs as its own user, 2102,
# which the traffic redirection leaves alone.
FROM base AS mesh-proxy
COPY target/docker/bin/mesh-proxy /usr/bin/mesh-proxy
USER 2102:2102
ENV MESH_PROXY_ADMIN=0.0.0.0:4191
EXPOSE 4143 4191
ENTRYPOINT ["/usr/bin/mesh-proxy"]

# The sidecar's init container: loads the inbound redirection rules with
# iptables-restore (Debian's iptables-nft and its libraries, copied by
# docker/build.sh). Runs as root with NET_ADMIN and NET_RAW, then exits.
FROM scratch AS mesh-proxy-init
COPY target/docker/init-rootfs/ /
COPY target/docker/bin/mesh-proxy-init /usr/bin/mesh-proxy-init
# The iptables tools (nft) are found on PATH.
ENV PATH=/usr/sbin:/usr/bin
ENTRYPOINT ["/usr/bin/mesh-proxy-init"]

# The control plane: MESH_CONTROLLER_LISTEN (gRPC :8086); identities with
# MESH_CONTROLLER_IDENTITY_* (docker-compose.yml, k8s/mesh/controller.yml).
FROM base AS mesh-controller
COPY target/docker/bin/mesh-controller /usr/bin/mesh-controller
# Where it may make and publish identities (--identity-generate,
# --identity-publish): its own, so that volumes mounted there are too.
COPY --chown=65532:65532 target/docker/empty/ /var/lib/stockkube/identity/
COPY --chown=65532:65532 target/docker/empty/ /var/run/stockkube/identity/
ENV MESH_CONTROLLER_LISTEN=0.0.0.0:8086
EXPOSE 8086
ENTRYPOINT ["/usr/bin/mesh-controller"]

# The injector, the admission webhook: MESH_INJECTOR_* (HTTPS :8443), its
# certificate in MESH_INJECTOR_TLS_DIR (the Secret `meshctl install` makes).
FROM base AS mesh-injector
COPY target/docker/bin/mesh-injector /usr/bin/mesh-injector
ENV MESH_INJECTOR_LISTEN=0.0.0.0:8443
EXPOSE 8443
ENTRYPOINT ["/usr/bin/mesh-injector"]

# The dashboard: MESH_DASHBOARD_* (docs/dashboard.md), HTTP on :8084.
FROM base AS mesh-dashboard
COPY target/docker/bin/mesh-dashboard /usr/bin/mesh-dashboard
COPY dashboard/assets/ /usr/share/mesh-dashboard/assets/
ENV MESH_DASHBOARD_LISTEN=0.0.0.0:8084 MESH_DASHBOARD_ASSETS_DIR=/usr/share/mesh-dashboard/assets
EXPOSE 8084
ENTRYPOINT ["/usr/bin/mesh-dashboard"]
