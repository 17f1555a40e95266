# Souk node image. Build: docker build -t souk .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin souk

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/souk souk && mkdir -p /var/lib/souk && chown souk /var/lib/souk
COPY --from=build /src/target/release/souk /usr/local/bin/souk
USER souk
ENV SOUK_DATA_DIR=/var/lib/souk SOUK_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["souk"]
CMD ["serve"]
