#!/usr/bin/env bash
# A new user's first run, timed: fresh clone, fresh virtualenv, `make install`, the demo server, and its
# first dense-vs-topk result at the CPU defaults through gradio_client; then the virtualenv size.
# usage: bash benchmarks/first_run_check.sh [REPO]   (REPO defaults to the current folder)
set -u
start=$(date +%s)
rm -rf /tmp/demo-check && git clone -q "${1:-.}" /tmp/demo-check && cd /tmp/demo-check
python3 -m venv .venv && . .venv/bin/activate
make install PYTHON=python > /tmp/demo_install.log 2>&1 || { echo install failed; exit 1; }
t_install=$(( $(date +%s) - start ))
python app.py > /tmp/demo_server.log 2>&1 &
server=$!
until curl -s -o /dev/null http://127.0.0.1:7860/; do sleep 1; done
t_up=$(( $(date +%s) - start ))
python - <<'PY'
from gradio_client import Client
c = Client("http://127.0.0.1:7860", verbose=False)
image, summary = c.predict("assets/tiny-wan-t2v", "topk", "density=0.25", "a red circle moving right on a striped blue background", 0, "", "", "", "", api_name="/compare")
print("image:", image); print(summary[:400])
PY
t_first=$(( $(date +%s) - start ))
kill $server
echo "install ${t_install}s, server up ${t_up}s, first result ${t_first}s"
du -sh .venv; du -sb .venv | awk "{printf \"%.2f GB\\n\", \$1/1e9}"; du -sb .venv | awk '{printf "%.2f GiB\n", $1/2^30}'
