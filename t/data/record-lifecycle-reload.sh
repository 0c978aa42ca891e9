#!/usr/bin/env bash
# Record nginx's error log over a master's life with one worker: start, HUP (a reload:
# new worker, old one drains), SIGKILL of the new worker (respawned), QUIT.
# Writes t/data/logs/lifecycle-reload.log (masked) and logs/raw/lifecycle-reload.log.
#
# Usage:  t/data/record-lifecycle-reload.sh
# Env:    NGINX=/usr/sbin/nginx
#         NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
#
# Placeholders: %%TIME%% %%OS%% %%RLIMIT%% as in logs/README.md; %%MASTER_PID%%;
# %%WORKER_PID%%, %%WORKER2_PID%%, %%WORKER3_PID%% for the workers in order of start;
# %%SENDER_PID%% for this script's shell, which sends the signals.
# nginx listens on 127.0.0.1 only, on a port picked at run time, and runs under
# timeout(1) so that it can never outlive the script.
set -euo pipefail
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/nginx.conf" <<EOF
load_module $MODULE;
daemon off; master_process on; worker_processes 1; user root;
pid $work/nginx.pid; error_log $work/error.log notice;
events {}
stream { server { listen 127.0.0.1:$port; return x; } }
EOF

log() { cat "$work/error.log" 2>/dev/null || true; }
# wait_for TEXT [COUNT]: until the log holds TEXT COUNT times (default 1), at most 10 s.
wait_for() {
	local n=${2:-1}
	for _ in $(seq 1 200); do
		[ "$(log | grep -cF -- "$1")" -ge "$n" ] && return 0
		sleep 0.05
	done
	echo "timed out waiting for: $1" >&2
	log >&2
	exit 1
}
# in_epoll PID: until the process sleeps in epoll_wait (its handlers are set).
in_epoll() {
	for _ in $(seq 1 200); do
		grep -q epoll_wait "/proc/$1/wchan" 2>/dev/null && return 0
		sleep 0.05
	done
	echo "$1 never waits in epoll_wait" >&2
	exit 1
}
nth_worker() { log | sed -n 's/.*start worker process \([0-9]*\).*/\1/p' | sed -n "${1}p"; }

timeout 60 "$NGINX" -p "$work/" -c "$work/nginx.conf" &
wait_for "start worker process"
master=$(cat "$work/nginx.pid")
in_epoll "$(nth_worker 1)"

kill -HUP "$master"
wait_for "start worker process" 2
wait_for "exited with code 0"
in_epoll "$(nth_worker 2)"
# A SIGIO line, if any, follows the reap at once; give it time to show.
sleep 1

kill -KILL "$(nth_worker 2)"
wait_for "start worker process" 3
in_epoll "$(nth_worker 3)"
sleep 1

kill -QUIT "$master"
wait_for ": exit" 3
wait "$!" || true

mkdir -p "$here/logs/raw"
cp "$work/error.log" "$here/logs/raw/lifecycle-reload.log"
python3 - "$work/error.log" "$here/logs/lifecycle-reload.log" "$master" "$$" <<'EOF'
import re, sys
src, dst, master, sender = sys.argv[1:5]
text = open(src).read()
workers = re.findall(r"start worker process (\d+)", text)
names = {master: "MASTER_PID", sender: "SENDER_PID"}
for i, w in enumerate(workers):
    names[w] = "WORKER_PID" if i == 0 else "WORKER%d_PID" % (i + 1)
out = []
for line in text.splitlines():
    line = re.sub(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} ", "%%TIME%% ", line)
    line = re.sub(r"\b\d{2,}\b", lambda m: "%%" + names[m.group(0)] + "%%" if m.group(0) in names else m.group(0), line)
    line = re.sub(r"OS: .*", "OS: %%OS%%", line)
    line = re.sub(r"getrlimit\(RLIMIT_NOFILE\): \d+:\d+", "getrlimit(RLIMIT_NOFILE): %%RLIMIT%%", line)
    out.append(line)
open(dst, "w").write("\n".join(out) + "\n")
EOF
echo "recorded $here/logs/lifecycle-reload.log"
