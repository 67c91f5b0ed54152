# Source this on the lent GPU machine (repository root as cwd): makes `dit_accel` (its root folders
# mapped as in pyproject.toml) and the lab code of `tools/` importable, and installs the carried wheels
# (diffusers is not on that machine). Usage: `source benchmarks/gpu_env.sh` (carry `.whl`). A new checkout makes `.whl`
# (git-ignored) with `pip download --no-deps -d .whl diffusers==0.42.1 flash-kmeans==0.3.1` (the
# latter only for benchmarks/check_kmeans.py).
# A call sends the tracked tree (57.5 MB with the shipped models: 22 MB tiny FLUX, 23 MB tiny Wan) plus its
# carry, at most 64 MiB. FA4's two 44 MB halves (.fa4/1, .fa4/2; nvidia-cutlass-dsl-libs-cu13 4.8.1) fit only
# with both tiny models out; its install call (.fa4/3, 19 MB, with .whl) with the tiny FLUX out. To leave a
# model out: `git rm -r -q --cached assets/tiny-flux` and `/assets/tiny-flux/` in .git/info/exclude; to put
# it back: `git reset -q assets/tiny-flux` and drop the line (same for assets/tiny-wan-t2v).
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
rm -rf /tmp/pkg && mkdir -p /tmp/pkg/dit_accel
cp -r dit_accel/. /tmp/pkg/dit_accel/
for folder in pipelines editing; do
    if [ -d "$folder" ]; then cp -r "$folder" "/tmp/pkg/dit_accel/$folder"; fi
done
cp -r tools /tmp/pkg/tools  # lab code (tiny-model training): python3 -m tools.tiny_wan.train
ln -s "$PWD/assets" /tmp/pkg/assets  # the shipped models, where dit_accel looks for them by default
export PYTHONPATH=/tmp/pkg:/tmp/site
export PYTHONUNBUFFERED=1
set +e

# The CLI must not run from the checkout's root: there `dit_accel/` would be imported without its
# mapped sub-packages. Results paths given to it should be absolute (e.g. $OUT).
dit_accel_cli() { (cd /tmp && python3 -m dit_accel.cli "$@"); }
