# Sourced by bin/pci-harness and bin/test: make a fresh Debian 12 machine ready.
#  1. Debian packages: installed with apt-get when root, otherwise the exact
#     command is printed and we stop (status 2).
#  2. .venv with the project installed (re-installed when pyproject.toml changes).
# Progress goes to stderr; stdout stays clean for --json.

PCI_HARNESS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# dosfstools, mtools, e2fsprogs, syslinux(-common): the AHCI-root guest's disk
# (mkfs.fat, mcopy, and syslinux/mke2fs from the recipe's own packages); grub-common
# (grub-mkstandalone) makes its UEFI loader; ovmf is the UEFI firmware boot-stress
# boots it with (--firmware ovmf).
PCI_HARNESS_DEBS=(qemu-system-x86 qemu-utils acpica-tools cpio python3-venv python3-pip
                  apt dpkg xz-utils ca-certificates
                  dosfstools mtools e2fsprogs syslinux syslinux-common grub-common ovmf
                  dropbear-bin openssh-client iproute2  # the nightly's two-host self-test
                  gcc libc6-dev)  # pingpong --load memory builds its guest checker

_say() { echo "pci-harness setup: $*" >&2; }

ensure_debian_packages() {
    local missing=() pkg
    for pkg in "${PCI_HARNESS_DEBS[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    # apt-get download (the guest image recipe) needs package lists.
    local lists_empty=0
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || lists_empty=1
    if [ ${#missing[@]} -eq 0 ] && [ $lists_empty -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" -eq 0 ]; then
        _say "installing Debian packages: ${missing[*]:-(package lists only)}"
        apt-get update -q >&2
        if [ ${#missing[@]} -gt 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
        fi
    else
        if [ ${#missing[@]} -gt 0 ]; then
            _say "missing Debian packages. Install them with:"
            echo "    sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y ${missing[*]}" >&2
        else
            _say "apt has no package lists (the guest image is built from Debian packages). Run:"
            echo "    sudo apt-get update" >&2
        fi
        exit 2
    fi
}

ensure_venv() {
    local venv="$PCI_HARNESS_ROOT/.venv" stamp want python
    python=${PCI_HARNESS_PYTHON:-/usr/bin/python3}
    [ -x "$python" ] || python=$(command -v python3)
    if [ ! -x "$venv/bin/python" ]; then
        _say "creating $venv with $python"
        "$python" -m venv "$venv" >&2
    fi
    stamp="$venv/.pci-harness-installed"
    want=$(cat "$PCI_HARNESS_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        _say "installing the project into $venv"
        "$venv/bin/python" -m pip install -q --upgrade pip >&2
        "$venv/bin/python" -m pip install -q -e "$PCI_HARNESS_ROOT[dev]" >&2
        echo "$want" > "$stamp"
    fi
}

pci_harness_setup() {
    ensure_debian_packages
    ensure_venv
}
