# One image with the three logpipe services; docker-compose picks the binary per service.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        cmake pkg-config libcurl4-openssl-dev libssl-dev zlib1g-dev libzstd-dev libsasl2-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p logpipe-generator -p logpipe-gateway -p logpipe-collector \
    && cp target/release/logpipe-generator target/release/logpipe-gateway target/release/logpipe-collector /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        ca-certificates curl libcurl4 libssl3 zlib1g libzstd1 libsasl2-2 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 logpipe
COPY --from=build /usr/local/bin/logpipe-* /usr/local/bin/
USER logpipe
