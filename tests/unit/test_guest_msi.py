"""MSI capability parsing from config bytes built here by hand (PCI 3.0, 6.8.1)."""

from harness.guest.msi import (
    MsiState,
    MsixEntry,
    MsixState,
    capability_offsets,
    interrupt_differences,
    parse_msi,
)


def config_with_msi(control: int, address: int, data: int, *, is_64: bool) -> bytes:
    config = bytearray(256)
    config[0x06] = 0x10          # status: capability list
    config[0x34] = 0x50          # first capability
    config[0x50:0x52] = bytes([0x01, 0x60])   # PM, next 0x60
    cap = 0x60
    config[cap:cap + 2] = bytes([0x05, 0x00])  # MSI, last
    config[cap + 2:cap + 4] = (control | (0x80 if is_64 else 0)).to_bytes(2, "little")
    config[cap + 4:cap + 8] = (address & 0xFFFFFFFF).to_bytes(4, "little")
    if is_64:
        config[cap + 8:cap + 12] = (address >> 32).to_bytes(4, "little")
        config[cap + 12:cap + 14] = data.to_bytes(2, "little")
    else:
        config[cap + 8:cap + 10] = data.to_bytes(2, "little")
    return bytes(config)


def test_msi_64bit_enabled_with_four_vectors() -> None:
    config = config_with_msi(0x0021, 0x1_FEE0_100C, 0x4041, is_64=True)
    assert capability_offsets(config) == {0x01: 0x50, 0x05: 0x60}
    assert parse_msi(config) == MsiState(enabled=True, vectors=4, address=0x1_FEE0_100C,
                                         data=0x4041)


def test_msi_32bit_reads_data_at_plus_8_not_plus_12() -> None:
    config = config_with_msi(0x0001, 0xFEE0_0000, 0x0022, is_64=False)
    assert parse_msi(config) == MsiState(True, 1, 0xFEE0_0000, 0x0022)


def test_no_capability_list_means_no_msi() -> None:
    config = bytearray(config_with_msi(0x0001, 0xFEE0_0000, 0x22, is_64=False))
    config[0x06] = 0             # status bit 4 clear: the pointer at 0x34 means nothing
    assert parse_msi(bytes(config)) is None


def test_a_looping_capability_list_ends() -> None:
    config = bytearray(256)
    config[0x06], config[0x34] = 0x10, 0x40
    config[0x40:0x42] = bytes([0x11, 0x40])   # MSI-X pointing at itself
    assert capability_offsets(bytes(config)) == {0x11: 0x40}


def test_differences_name_the_field_and_the_entry() -> None:
    entry = MsixEntry(0xFEE0_0000, 0x4021, False)
    before = (MsixState(True, False, 2, (entry, entry)), None)
    same = (MsixState(True, False, 2, (entry, entry)), None)
    changed = (MsixState(False, False, 2, (entry, MsixEntry(0xFEE0_0000, 0x4022, False))), None)
    assert interrupt_differences(before, same) == []
    assert interrupt_differences(before, changed) == [
        "MSI-X enabled: True -> False",
        ("MSI-X entry 1: address 0xfee00000 data 0x4021 masked False -> "
         "address 0xfee00000 data 0x4022 masked False")]
    msi = MsiState(True, 1, 0xFEE0_0000, 0x21)
    assert interrupt_differences((None, msi), (None, None)) == [f"MSI: {msi} -> None"]
