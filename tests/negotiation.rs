//! Negotiation through vhost-user: features, protocol features, config space, capsets, display
//! info, GPU_SET_SOCKET, and the 2D/cursor commands a guest console sends.

use support::*;

fn le32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

#[test]
fn features_and_protocol_features() {
    let d = Daemon::start(Vec::<&str>::new());
    let vm = TestVm::connect(d.socket_path());
    let f = vm.backend_features();
    for (bit, name) in [
        (VIRTIO_F_VERSION_1, "VERSION_1"),
        (VIRTIO_GPU_F_VIRGL, "VIRGL"),
        (VIRTIO_GPU_F_RESOURCE_BLOB, "RESOURCE_BLOB"),
        (VIRTIO_GPU_F_CONTEXT_INIT, "CONTEXT_INIT"),
        (VIRTIO_GPU_F_RESOURCE_UUID, "RESOURCE_UUID"),
        (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
        (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        (VIRTIO_F_RING_RESET, "RING_RESET"),
        (VHOST_USER_F_PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
    ] {
        assert_ne!(f & bit, 0, "{name} not offered (features {f:#x})");
    }
    assert_eq!(f & VIRTIO_GPU_F_EDID, 0, "EDID must not be offered");
    let p = vm.protocol_features();
    const CONFIG: u64 = 1 << 9;
    const REPLY_ACK: u64 = 1 << 3;
    const BACKEND_REQ: u64 = 1 << 5;
    const MQ: u64 = 1 << 0;
    for (bit, name) in [
        (CONFIG, "CONFIG"),
        (REPLY_ACK, "REPLY_ACK"),
        (BACKEND_REQ, "BACKEND_REQ"),
        (MQ, "MQ"),
    ] {
        assert_ne!(p & bit, 0, "protocol feature {name} missing ({p:#x})");
    }
    assert_eq!(vm.queue_num(), Some(2));
}

#[test]
fn qemu_style_ack_of_every_transport_bit_is_accepted() {
    // QEMU acks INDIRECT_DESC, EVENT_IDX, VERSION_1 and RING_RESET whatever the guest wants.
    let d = Daemon::start(Vec::<&str>::new());
    let acked = VIRTIO_F_VERSION_1
        | VIRTIO_RING_F_INDIRECT_DESC
        | VIRTIO_RING_F_EVENT_IDX
        | VIRTIO_F_RING_RESET
        | VHOST_USER_F_PROTOCOL_FEATURES
        | VIRTIO_GPU_F_VIRGL;
    let mut vm = TestVm::builder().features(acked).connect(d.socket_path());
    assert!(vm.event_idx());
    let r = vm.get_capset_info(0);
    assert_resp(&r, RESP_OK_CAPSET_INFO, "GET_CAPSET_INFO with EVENT_IDX");
}

#[test]
fn config_space_whole_partial_and_beyond() {
    let d = Daemon::start(["--channel", "2:/nonexistent/portal.sock"]);
    let mut vm = TestVm::connect(d.socket_path());
    let c = vm.get_config(0, 24);
    assert_eq!(c.len(), 24);
    assert_eq!(le32_at(&c, 0), 0, "events_read");
    assert_eq!(le32_at(&c, 4), 0, "events_clear");
    assert_eq!(le32_at(&c, 8), 1, "num_scanouts");
    assert_eq!(le32_at(&c, 12), 1, "num_capsets");
    assert_eq!(le32_at(&c, 16), 0, "blob_alignment");
    // crosvm reads single fields.
    assert_eq!(vm.get_config(12, 4), 1u32.to_le_bytes());
    assert_eq!(vm.get_config(8, 4), 1u32.to_le_bytes());
    // QEMU writes the struct back when the guest clears events; it must be accepted.
    vm.set_config(0, &c[..16]);
    assert_eq!(vm.get_config(12, 4), 1u32.to_le_bytes());
}

#[test]
fn zero_scanouts() {
    let d = Daemon::start(["--scanouts", "0"]);
    let mut vm = TestVm::connect(d.socket_path());
    assert_eq!(vm.get_config(8, 4), 0u32.to_le_bytes());
    let r = vm.ctrl(&hdr(CMD_SET_SCANOUT, 0, 0, 0, 0), 24);
    // Too short for SET_SCANOUT: an error, not a crash.
    assert_ne!(resp_type(&r), RESP_OK_NODATA);
    assert_resp(
        &vm.get_capset_info(0),
        RESP_OK_CAPSET_INFO,
        "capset info with 0 scanouts",
    );
}

#[test]
fn capset_info_and_capset_bits() {
    let d = Daemon::start([
        "--channel",
        "wayland:/x/wayland-0",
        "--channel",
        "2:/x/portal",
        "--channel",
        "0x12:/x/dbus",
        "--channel",
        "40:/x/big",
    ]);
    let mut vm = TestVm::connect(d.socket_path());
    let r = vm.get_capset_info(0);
    assert_resp(&r, RESP_OK_CAPSET_INFO, "GET_CAPSET_INFO(0)");
    let info = parse_capset_info(&r);
    assert_eq!(info.capset_id, 5);
    assert_eq!(info.max_version, 0);
    assert_eq!(info.max_size, 16);
    assert_resp(
        &vm.get_capset_info(1),
        RESP_ERR_INVALID_PARAMETER,
        "GET_CAPSET_INFO(1)",
    );
    let r = vm.get_capset(5, 0);
    assert_resp(&r, RESP_OK_CAPSET, "GET_CAPSET(5)");
    assert_eq!(le32_at(&r, 24), 1, "capset version");
    assert_eq!(
        le32_at(&r, 28),
        (1 << 1) | (1 << 2) | (1 << 0x12),
        "supported_channels (type 40 cannot be advertised)"
    );
    assert_eq!(le32_at(&r, 32), 0, "supports_dmabuf");
    assert_eq!(le32_at(&r, 36), 0, "supports_external_gpu_memory");
    // The requested version is ignored, as by every rutabaga host.
    assert_resp(&vm.get_capset(5, 7), RESP_OK_CAPSET, "GET_CAPSET(5, 7)");
    assert_resp(
        &vm.get_capset(4, 0),
        RESP_ERR_INVALID_PARAMETER,
        "GET_CAPSET(4)",
    );
    assert!(d.log().contains("0x28") || d.log().contains("40"));
}

#[test]
fn display_info_one_disabled_scanout() {
    let d = Daemon::start(Vec::<&str>::new());
    let mut vm = TestVm::connect(d.socket_path());
    let r = vm.get_display_info();
    assert_resp(&r, RESP_OK_DISPLAY_INFO, "GET_DISPLAY_INFO");
    assert_eq!(r.len(), 408);
    assert_eq!(le32_at(&r, 24 + 8), 1024, "width");
    assert_eq!(le32_at(&r, 24 + 12), 768, "height");
    assert_eq!(le32_at(&r, 24 + 16), 0, "enabled");
    for i in 1..16 {
        assert_eq!(&r[24 + i * 24..48 + i * 24], &[0u8; 24], "pmode {i}");
    }
    // EDID is not offered; asking anyway is an error, not a hang.
    assert_resp(&vm.get_edid(0), RESP_ERR_UNSPEC, "GET_EDID");
}

#[test]
fn gpu_set_socket_is_accepted_and_the_device_keeps_serving() {
    let d = Daemon::start(Vec::<&str>::new());
    let mut vm = TestVm::connect(d.socket_path());
    vm.send_gpu_set_socket();
    assert_resp(
        &vm.get_capset_info(0),
        RESP_OK_CAPSET_INFO,
        "after GPU_SET_SOCKET",
    );
    // A second one (guest reboot) replaces the first.
    assert_eq!(vm.send_gpu_set_socket_acked().unwrap(), 0);
    assert_resp(
        &vm.get_capset_info(0),
        RESP_OK_CAPSET_INFO,
        "after a second GPU_SET_SOCKET",
    );
}

fn body(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn req(cmd: u32, words: &[u32]) -> Vec<u8> {
    let mut r = hdr(cmd, 0, 0, 0, 0).to_vec();
    r.extend(body(words));
    r
}

#[test]
fn console_2d_and_cursor_commands_without_a_display() {
    let d = Daemon::start(Vec::<&str>::new());
    let mut vm = TestVm::connect(d.socket_path());
    let res = 7;
    // RESOURCE_CREATE_2D: XRGB 64x32.
    assert_ok(
        &vm.ctrl(&req(CMD_RESOURCE_CREATE_2D, &[res, 2, 64, 32]), 24),
        "CREATE_2D",
    );
    assert_resp(
        &vm.ctrl(&req(CMD_RESOURCE_CREATE_2D, &[res, 2, 64, 32]), 24),
        RESP_ERR_INVALID_RESOURCE_ID,
        "CREATE_2D twice",
    );
    assert_resp(
        &vm.ctrl(&req(CMD_RESOURCE_CREATE_2D, &[8, 999, 64, 32]), 24),
        RESP_ERR_INVALID_PARAMETER,
        "CREATE_2D with an unknown format",
    );
    // ATTACH_BACKING with one entry in guest memory.
    let gpa = vm.alloc(64 * 32 * 4, 4096);
    let mut ab = req(CMD_RESOURCE_ATTACH_BACKING, &[res, 1]);
    ab.extend(gpa.to_le_bytes());
    ab.extend(body(&[64 * 32 * 4, 0]));
    assert_ok(&vm.ctrl(&ab, 24), "ATTACH_BACKING");
    // ATTACH_BACKING pointing outside guest memory.
    let mut bad = req(CMD_RESOURCE_ATTACH_BACKING, &[res, 1]);
    bad.extend((vm.mem_end() + 4096).to_le_bytes());
    bad.extend(body(&[4096, 0]));
    assert_resp(
        &vm.ctrl(&bad, 24),
        RESP_ERR_INVALID_PARAMETER,
        "ATTACH_BACKING outside memory",
    );
    // SET_SCANOUT: rect {0,0,64,32}, scanout 0.
    assert_ok(
        &vm.ctrl(&req(CMD_SET_SCANOUT, &[0, 0, 64, 32, 0, res]), 24),
        "SET_SCANOUT",
    );
    assert_resp(
        &vm.ctrl(&req(CMD_SET_SCANOUT, &[0, 0, 64, 32, 1, res]), 24),
        RESP_ERR_INVALID_SCANOUT_ID,
        "SET_SCANOUT on scanout 1",
    );
    assert_resp(
        &vm.ctrl(&req(CMD_SET_SCANOUT, &[0, 0, 65, 32, 0, res]), 24),
        RESP_ERR_INVALID_PARAMETER,
        "SET_SCANOUT rect too wide",
    );
    // TRANSFER_TO_HOST_2D: rect, offset u64, resource.
    assert_ok(
        &vm.ctrl(
            &req(CMD_TRANSFER_TO_HOST_2D, &[0, 0, 64, 32, 0, 0, res, 0]),
            24,
        ),
        "TRANSFER_TO_HOST_2D",
    );
    assert_ok(
        &vm.ctrl(&req(CMD_RESOURCE_FLUSH, &[0, 0, 64, 32, res, 0]), 24),
        "RESOURCE_FLUSH",
    );
    assert_resp(
        &vm.ctrl(&req(CMD_RESOURCE_FLUSH, &[0, 0, 64, 32, 99, 0]), 24),
        RESP_ERR_INVALID_RESOURCE_ID,
        "RESOURCE_FLUSH of an unknown resource",
    );
    // Cursor queue.
    assert_ok(
        &vm.cursor(&req(CMD_UPDATE_CURSOR, &[0, 10, 10, 0, res, 0, 0, 0]), 24),
        "UPDATE_CURSOR",
    );
    assert_ok(
        &vm.cursor(&req(CMD_MOVE_CURSOR, &[0, 20, 20, 0, 0, 0, 0, 0]), 24),
        "MOVE_CURSOR",
    );
    // UUID: resource id big-endian in bytes 12..15.
    let r = vm.resource_assign_uuid(res);
    assert_resp(&r, RESP_OK_RESOURCE_UUID, "ASSIGN_UUID");
    let mut uuid = [0u8; 16];
    uuid[12..].copy_from_slice(&res.to_be_bytes());
    assert_eq!(&r[24..40], &uuid);
    assert_ok(
        &vm.ctrl(&req(CMD_RESOURCE_DETACH_BACKING, &[res, 0]), 24),
        "DETACH_BACKING",
    );
    assert_ok(&vm.resource_unref(res), "UNREF");
    assert_resp(
        &vm.resource_unref(res),
        RESP_ERR_INVALID_RESOURCE_ID,
        "UNREF twice",
    );
}
