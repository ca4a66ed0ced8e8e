# botfleet's image: one binary for every process (worker, api, migrate, webhook, fake-telegram).
#   docker build -t botfleet .
#   docker run --rm botfleet --version
# Build stage: the release binary, from the locked dependencies.
FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin botfleet \
    && strip target/release/botfleet

# Runtime: Debian slim with CA certificates (for api.telegram.org), a non-root user, nothing else.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin botfleet
COPY --from=build /src/target/release/botfleet /usr/local/bin/botfleet
USER 10001:10001
# Main ports (worker 8081, api 8082) and admin ports (9091, 9092); set BOTFLEET_LISTEN and
# BOTFLEET_ADMIN_LISTEN to 0.0.0.0:… in containers.
EXPOSE 8081 8082 9091 9092
ENV BOTFLEET_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/botfleet"]
CMD ["--help"]
