//! Unit tests of the resource table and the host-visible region allocator.

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::BorrowedFd;

use vm_memory::{ByteValued, Bytes, GuestMemoryMmap};

use super::*;

const PAGE: u64 = 4096;
const BASE: u64 = 0x1_0000;
const NO_ENTRIES: BackingEntries = BackingEntries {
    offset: 0,
    count: 0,
};

fn two_d(resource_id: u32, width: u32, height: u32) -> ResourceCreate2d {
    ResourceCreate2d {
        resource_id,
        format: 1,
        width,
        height,
    }
}

/// Records what the allocator asks the VMM to map and unmap.
#[derive(Default)]
struct Mapper {
    calls: RefCell<Vec<(&'static str, u64, u64)>>,
}

impl ShmMapper for Mapper {
    fn map(&self, _: BorrowedFd<'_>, offset: u64, len: u64, _: bool) -> std::io::Result<()> {
        self.calls.borrow_mut().push(("map", offset, len));
        Ok(())
    }
    fn unmap(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.calls.borrow_mut().push(("unmap", offset, len));
        Ok(())
    }
}

fn limits() -> Limits {
    Limits {
        max_resources: 4,
        max_entries_per_resource: 3,
        max_total_entries: 4,
        ..Limits::default()
    }
}

fn mem() -> GuestMem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(BASE), 0x1_0000)]).unwrap()
}

/// A request whose backing entries (each one page of guest memory) start at byte 0.
fn entries(m: &GuestMem, n: u32) -> (SgList, BackingEntries) {
    for i in 0..u64::from(n) {
        let e = MemEntry {
            addr: BASE + 0x8000 + i * PAGE,
            length: PAGE as u32,
            padding: 0,
        };
        m.write_obj(
            e,
            GuestAddress(BASE + i * std::mem::size_of::<MemEntry>() as u64),
        )
        .unwrap();
    }
    let mut req = SgList::new();
    req.push(
        GuestAddress(BASE),
        n as usize * std::mem::size_of::<MemEntry>(),
    );
    (
        req,
        BackingEntries {
            offset: 0,
            count: n,
        },
    )
}

fn host_blob(r: &mut Resources, id: u32, size: u64) -> Result<(), GpuError> {
    let b = ResourceCreateBlob {
        resource_id: id,
        blob_mem: BLOB_MEM_HOST3D,
        blob_id: 1,
        size,
        ..Default::default()
    };
    r.create_blob(&mem(), &SgList::new(), &b, NO_ENTRIES, |blob_id, sz| {
        assert_eq!((blob_id, sz), (1, size));
        Ok((File::open("/dev/null").unwrap().into(), 0x42, true))
    })
}

fn invalid_parameter(r: Result<impl std::fmt::Debug, GpuError>, what: &str) {
    match r {
        Err(GpuError::InvalidParameter(w)) => assert_eq!(w, what),
        r => panic!("{r:?}: expected {what}"),
    }
}

#[test]
fn host_blobs_map_page_aligned_without_overlap() {
    let mut r = Resources::new(16 * PAGE, PAGE, limits());
    let m = Mapper::default();
    host_blob(&mut r, 1, PAGE + 1).unwrap();
    host_blob(&mut r, 2, PAGE).unwrap();
    // The first takes two pages (its size rounded up).
    assert_eq!(r.map(1, 2 * PAGE, &m).unwrap(), 0x42);
    invalid_parameter(r.map(1, 8 * PAGE, &m), "resource is already mapped");
    invalid_parameter(r.map(2, 3 * PAGE, &m), "range overlaps a live mapping");
    invalid_parameter(
        r.map(2, PAGE + 1, &m),
        "offset is not aligned to the host page size",
    );
    invalid_parameter(
        r.map(2, 16 * PAGE, &m),
        "range exceeds the host-visible region",
    );
    invalid_parameter(
        r.map(2, u64::MAX - PAGE + 1, &m),
        "range exceeds the host-visible region",
    );
    // Right below and right after the first mapping fit.
    r.map(2, 4 * PAGE, &m).unwrap();
    r.unmap(2, &m).unwrap();
    r.map(2, PAGE, &m).unwrap();
    assert_eq!(
        *m.calls.borrow(),
        [
            ("map", 2 * PAGE, 2 * PAGE),
            ("map", 4 * PAGE, PAGE),
            ("unmap", 4 * PAGE, PAGE),
            ("map", PAGE, PAGE),
        ]
    );
}

#[test]
fn unmapping_frees_the_slot() {
    let mut r = Resources::new(4 * PAGE, PAGE, limits());
    let m = Mapper::default();
    host_blob(&mut r, 1, 4 * PAGE).unwrap();
    host_blob(&mut r, 2, PAGE).unwrap();
    r.map(1, 0, &m).unwrap();
    invalid_parameter(r.map(2, 3 * PAGE, &m), "range overlaps a live mapping");
    r.unmap(1, &m).unwrap();
    invalid_parameter(r.unmap(1, &m), "resource is not mapped");
    r.map(2, 3 * PAGE, &m).unwrap();
    // UNREF unmaps a mapped blob.
    r.unref(2, &m, &mut GuestLog::new(1)).unwrap();
    assert_eq!(m.calls.borrow().last(), Some(&("unmap", 3 * PAGE, PAGE)));
    assert!(matches!(
        r.check_exists(2),
        Err(GpuError::InvalidResource(2))
    ));
}

#[test]
fn simultaneous_mappings_are_bounded() {
    let mut r = Resources::new(
        16 * PAGE,
        PAGE,
        Limits {
            max_mappings: 2,
            ..limits()
        },
    );
    let m = Mapper::default();
    for id in 1..=3 {
        host_blob(&mut r, id, PAGE).unwrap();
    }
    r.map(1, 0, &m).unwrap();
    r.map(2, PAGE, &m).unwrap();
    // The third is refused with a limit error (ERR_OUT_OF_MEMORY, logged once per context)
    // and never reaches the VMM.
    match r.map(3, 2 * PAGE, &m) {
        Err(e @ GpuError::Limit(LimitKind::MappingsPerVm, 2)) => {
            assert_eq!(e.response(), RESP_ERR_OUT_OF_MEMORY);
            assert_eq!(e.limit(), Some((LimitKind::MappingsPerVm, 2)));
        }
        other => panic!("{other:?}: expected the mappings limit"),
    }
    assert_eq!(m.calls.borrow().len(), 2);
    // An unmap makes room again.
    r.unmap(1, &m).unwrap();
    r.map(3, 2 * PAGE, &m).unwrap();
}

#[test]
fn only_host_blobs_map() {
    let mut r = Resources::new(16 * PAGE, PAGE, limits());
    let m = Mapper::default();
    r.create_2d(&two_d(1, 8, 8)).unwrap();
    invalid_parameter(
        r.map(1, 0, &m),
        "only host-backed (HOST3D) blobs can be mapped",
    );
    invalid_parameter(r.unmap(1, &m), "resource is not mapped");
    assert!(matches!(r.map(9, 0, &m), Err(GpuError::InvalidResource(9))));
    assert!(m.calls.borrow().is_empty());
}

#[test]
fn resource_ids_and_count_are_checked() {
    let mut r = Resources::new(0, PAGE, limits());
    let b = |id| two_d(id, 1, 1);
    assert!(matches!(
        r.create_2d(&b(0)),
        Err(GpuError::InvalidResource(0))
    ));
    for id in 1..=4 {
        r.create_2d(&b(id)).unwrap();
    }
    assert!(matches!(
        r.create_2d(&b(1)),
        Err(GpuError::ResourceExists(1))
    ));
    assert!(matches!(
        r.create_2d(&b(5)),
        Err(GpuError::Limit(LimitKind::ResourcesPerVm, 4))
    ));
    // The host-blob path checks the limit before taking the context's memory.
    let blob = ResourceCreateBlob {
        resource_id: 5,
        blob_mem: BLOB_MEM_HOST3D,
        size: 1,
        ..Default::default()
    };
    let res = r.create_blob(&mem(), &SgList::new(), &blob, NO_ENTRIES, |_, _| {
        panic!("host memory taken past the limit")
    });
    assert!(matches!(
        res,
        Err(GpuError::Limit(LimitKind::ResourcesPerVm, 4))
    ));
    assert_eq!(r.dims_2d(2).unwrap(), (1, 1));
}

#[test]
fn backing_entries_are_budgeted() {
    let m = mem();
    let mut r = Resources::new(0, PAGE, limits());
    for id in 1..=2 {
        r.create_2d(&two_d(id, 1, 1)).unwrap();
    }
    let (req, e) = entries(&m, 4);
    assert!(matches!(
        r.attach_backing(&m, &req, 1, e),
        Err(GpuError::Limit(LimitKind::EntriesPerResource, 3))
    ));
    let (req, e) = entries(&m, 3);
    r.attach_backing(&m, &req, 1, e).unwrap();
    // Replacing a backing counts only the difference.
    r.attach_backing(&m, &req, 1, e).unwrap();
    let (req2, e2) = entries(&m, 2);
    assert!(matches!(
        r.attach_backing(&m, &req2, 2, e2),
        Err(GpuError::Limit(LimitKind::EntriesPerVm, 4))
    ));
    r.detach_backing(1).unwrap();
    r.attach_backing(&m, &req2, 2, e2).unwrap();
    r.attach_backing(&m, &req2, 1, e2).unwrap();
    assert_eq!(r.total_entries, 4);
    // UNREF gives the entries back.
    r.unref(1, &Mapper::default(), &mut GuestLog::new(1))
        .unwrap();
    assert_eq!(r.total_entries, 2);
}

#[test]
fn bad_entries_are_refused() {
    let m = mem();
    let mut r = Resources::new(0, PAGE, limits());
    r.create_2d(&two_d(1, 1, 1)).unwrap();
    let (req, e) = entries(&m, 0);
    invalid_parameter(r.attach_backing(&m, &req, 1, e), "no backing entries");
    let (req, mut e) = entries(&m, 2);
    e.count = 3;
    assert!(matches!(
        r.attach_backing(&m, &req, 1, e),
        Err(GpuError::ShortRequest { have: 32, need: 48 })
    ));
    let outside = MemEntry {
        addr: 0x10,
        length: 8,
        padding: 0,
    };
    let mut req = SgList::new();
    req.push(GuestAddress(BASE), outside.as_slice().len());
    m.write_obj(outside, GuestAddress(BASE)).unwrap();
    let e = BackingEntries {
        count: 1,
        ..NO_ENTRIES
    };
    assert!(matches!(
        r.attach_backing(&m, &req, 1, e),
        Err(GpuError::BadEntry {
            index: 0,
            addr: 0x10,
            len: 8
        })
    ));
    assert_eq!(r.total_entries, 0);
}
