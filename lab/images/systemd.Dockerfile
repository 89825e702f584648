# The lab's container with systemd as PID 1, for the row that starts the
# documented user unit for real: FROM the lab image (itself FROM the
# mmdebstrap base; no registry, ever). libpam-systemd brings logind, so
# `loginctl enable-linger` starts the user's manager as a login would.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      systemd systemd-sysv dbus libpam-systemd \
 && rm -rf /var/lib/apt/lists/*
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
