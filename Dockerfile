# kgate's container image: the gateway only (kernels run in their own pods,
# from the kernelspecs' images). docs/kubernetes.md says how it is deployed.
#
#   docker build -t kgate .                    # or: podman build -t kgate .
#
# NODE_IMAGE is any Debian-based Node.js 20 image with npm; the default is the
# official one. scripts/build-gateway-image.sh builds this file with no image
# registry: on a local base made from the host's Node.js.
ARG NODE_IMAGE=docker.io/library/node:20-bookworm-slim

# --- build: the whole dependency tree, the TypeScript build, then only what runs ---
FROM ${NODE_IMAGE} AS build
# Marks this stage's layers, so a builder can find its stale ones (scripts/build-gateway-image.sh).
LABEL kgate.stage=build
WORKDIR /src
# The lock file alone first, so a change of source reuses the npm ci layer.
COPY package.json package-lock.json ./
# npm reaches its registry as configured in the build's environment (a
# proxy's variables, or an npmrc mounted for the build, never copied into a
# layer: scripts/build-gateway-image.sh does that with this machine's).
RUN npm ci --no-audit --no-fund --loglevel=warn
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY demo ./demo
COPY status ./status
COPY kernelspecs ./kernelspecs
# zeromq's addon is a prebuilt binary from its package (no compiler in either
# stage); loading it here fails the build early if it does not fit this libc.
# The other operating systems' prebuilt addons (15 MB) go: this image is Linux.
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund \
 && rm -rf node_modules/zeromq/build/darwin node_modules/zeromq/build/win32 \
 && node --input-type=module -e "await import('zeromq')"

# --- runtime: Node.js, the built gateway and its production dependencies ---
FROM ${NODE_IMAGE}
ENV NODE_ENV=production
# Inside a container the gateway listens on the pod's address, not on
# loopback. As environment defaults, not arguments: a Deployment's `args`
# replace an image's CMD, but an argument or a KG_* variable of the pod still
# overrides these.
ENV KG_IP=0.0.0.0 KG_PORT=8888
# A user of its own, with no home and no shell; the files stay root's, so the
# gateway cannot change its own code. The uid is the one deploy/ runs as.
RUN groupadd --gid 10001 kgate \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kgate
WORKDIR /app
# What package.json's "files" ships, plus the pruned node_modules.
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/kernelspecs ./kernelspecs
COPY --from=build /src/demo/index.html ./demo/index.html
COPY --from=build /src/demo/dist ./demo/dist
COPY --from=build /src/status/index.html ./status/index.html
USER 10001:10001
# The gateway's port (--port). /metrics on a port of its own only when
# --metrics-port is given (deploy/ uses 9090).
EXPOSE 8888
ENTRYPOINT ["node", "/app/dist/cli.js"]
