#!/usr/bin/env bash
# Download, on a machine with registry access, the wheels that benchmarks/gpu/run.sh installs on a
# GPU machine without it. The GPU machine is assumed to have torch (with CUDA), lightning (and what
# it pulls in: numpy, pyyaml, packaging, tqdm, fsspec, typing-extensions, torchmetrics), pluggy and
# triton; everything else genloom's GPU run imports comes from here:
#
#   omegaconf, rich (+ markdown-it-py, mdurl, pygments)          genloom's config and CLI
#   safetensors, tokenizers                                      weights, BPE
#   pytest, iniconfig                                            the gpu-marked tests
#   transformers and its closure (huggingface-hub, hf-xet, regex, typer, click, httpx2, pydantic...)
#                                                                the HF side of benchmarks/decode.py
#   setuptools                                                   `pip install -e .` without build isolation
#
# Not brought: wandb (the runs log to CSV), scikit-learn, statsmodels, scipy, pillow (image and
# series data, not used by the GPU run). Versions are those installed here, so the GPU machine runs
# what the CPU tests ran. Binary wheels are fetched for each Python in PYTHON_VERSIONS (the GPU
# machine's Python is not known in advance).
#
#   benchmarks/gpu/prepare.sh [WHEEL_DIR]     (default benchmarks/gpu/wheels, ignored by git)
#   PYTHON_VERSIONS="3.11 3.12" benchmarks/gpu/prepare.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=${1:-$here/wheels}
python=${PYTHON:-python3}
versions=${PYTHON_VERSIONS:-"3.10 3.11 3.12 3.13"}
limit_mib=${WHEEL_LIMIT_MIB:-56}

# what the GPU machine already has (normalised names): never downloaded
device_has="torch lightning pytorch-lightning lightning-utilities torchmetrics pluggy triton numpy pyyaml packaging tqdm
typing-extensions fsspec filelock jinja2 markupsafe sympy mpmath networkx setuptools aiohttp"
wanted="omegaconf rich safetensors tokenizers pytest transformers"

mkdir -p "$dest"
# the pinned closure of $wanted, minus $device_has, from this machine's installed metadata
pins=$("$python" - "$wanted" "$device_has" <<'EOF'
import importlib.metadata as md, re, sys
from packaging.requirements import Requirement
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
want, have = sys.argv[1].split(), set(map(norm, sys.argv[2].split()))
seen, stack = {}, [norm(n) for n in want]
while stack:
    name = stack.pop()
    if name in seen or name in have:
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        sys.exit(f"{name} is not installed here: install it (pip install -c constraints.txt {name}) and run again")
    seen[name] = dist.version
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            stack.append(norm(req.name))
print(" ".join(f"{n}=={v}" for n, v in sorted(seen.items())))
EOF
)
setuptools_pin="setuptools==$("$python" -c 'import importlib.metadata as m; print(m.version("setuptools"))')"
echo "pinned: $pins $setuptools_pin"

read -r -a pin_list <<<"$pins $setuptools_pin"

fetch() {  # fetch VERSION REQUIREMENT...: binary wheels only, for Linux x86-64 CPython VERSION
    local version=$1
    shift
    # --no-deps: the closure is already explicit
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$dest" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --implementation cp --python-version "$version" "$@"
}

for version in $versions; do
    if fetch "$version" "${pin_list[@]}" 2>/dev/null; then
        continue
    fi
    # a pinned version needs a newer Python: fall back, for this Python only, to the newest that fits
    for pin in "${pin_list[@]}"; do
        if ! fetch "$version" "$pin" 2>/dev/null; then
            echo "python $version: $pin has no wheel; taking the newest ${pin%%==*} that fits"
            fetch "$version" "${pin%%==*}" || echo "warning: python $version: no wheel of ${pin%%==*} at all" >&2
        fi
    done
done
printf '%s\n' "${pin_list[@]}" >"$dest/requirements.txt"

size_mib=$(du -sm "$dest" | cut -f1)
echo "wheels: $(find "$dest" -name '*.whl' | wc -l) files, ${size_mib} MiB in $dest"
if [ "$size_mib" -gt "$limit_mib" ]; then
    echo "error: ${size_mib} MiB exceeds the ${limit_mib} MiB limit (the device call carries at most 64 MiB); set PYTHON_VERSIONS to fewer versions" >&2
    exit 1
fi
