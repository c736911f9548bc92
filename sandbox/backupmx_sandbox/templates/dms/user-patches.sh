#!/bin/bash
# The sandbox primary's user-patches.sh (written by backupmx_sandbox.dmshost), shaped
# like the seed's: docker-mailserver runs it at the start of every new container.
# backupmx's own block, once a deploy adds it, comes after these lines.

# The seed's PROXY-v2 listener: postscreen on :2525 behind HAProxy; the stock :25
# stays for internal clients. The sentinel keeps a second run from adding it twice.
if ! grep -q '^# sandbox: the PROXY-v2 listener' /etc/postfix/master.cf; then
  cat >>/etc/postfix/master.cf <<'LISTENER'
# sandbox: the PROXY-v2 listener
2525      inet  n       -       n       -       1       postscreen
  -o syslog_name=postfix/smtpd-proxy25
  -o postscreen_upstream_proxy_protocol=haproxy
  -o postscreen_upstream_proxy_timeout=5s
LISTENER
fi

# The layers switched on in the sandbox that docker-mailserver has no knob for
# (`backupmx-sandbox layer`): the sandbox rewrites this file, never the lines above.
if [ -f /tmp/docker-mailserver/sandbox-layers.sh ]; then
  bash /tmp/docker-mailserver/sandbox-layers.sh
fi
