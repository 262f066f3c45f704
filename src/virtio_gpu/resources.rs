//! Resources and the host-visible region allocator.
//!
//! Owns every resource the guest created (2D, guest-backed blob, host-backed HOST3D blob), their
//! backing entries and the VM-wide entry budget, and the placement of host blobs in the
//! host-visible region (what is mapped where, page alignment, no overlap, inside the region).
//! It validates every guest number (ids, entry counts, entry ranges, offsets) before use. It
//! must never look up or change contexts, scanouts or fences, nor log a refusal: the coordinator
//! in `gpu.rs` does that with the [`GpuError`] returned here. Host memory comes in only through
//! the closure [`Resources::create_blob`] is given.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};

use vm_memory::GuestAddress;

use super::command::BackingEntries;
use super::error::GpuError;
use super::protocol::*;
use super::{Limits, ShmMapper};
use crate::cross_domain::{Lookup, ResourceView};
use crate::guest_mem::{range_is_valid, GuestMem, SgList};
use crate::guest_warn;
use crate::idmap::{IdMap, IdSet};
use crate::limitlog::LimitKind;
use crate::ratelimit::GuestLog;

enum Kind {
    TwoD { width: u32, height: u32 },
    GuestBlob,
    HostBlob(HostMem),
}

/// Host memory behind a HOST3D blob.
struct HostMem {
    fd: OwnedFd,
    size: u64,
    map_info: u32,
    writable: bool,
    /// Offset and length of the live mapping in the host-visible region.
    mapped: Option<(u64, u64)>,
}

struct Resource {
    kind: Kind,
    backing: Option<SgList>,
}

impl Resource {
    fn entries(&self) -> usize {
        self.backing.as_ref().map_or(0, SgList::segments)
    }
}

/// Host memory a context hands over for a HOST3D blob: the fd, its `map_info` and whether it
/// may be mapped writable.
pub(super) type HostBlob = (OwnedFd, u32, bool);

/// The resource table, the backing-entry budget and the host-visible region's mappings.
pub(super) struct Resources {
    resources: IdMap<u32, Resource>,
    /// Backing entries over all resources (bounded by `Limits::max_total_entries`).
    total_entries: usize,
    /// Live mappings in the host-visible region: offset → (length, resource id).
    mappings: BTreeMap<u64, (u64, u32)>,
    shm_size: u64,
    page_size: u64,
    limits: Limits,
}

impl Resources {
    /// An empty table for a host-visible region of `shm_size` bytes mapped in `page_size`
    /// pages.
    pub(super) fn new(shm_size: u64, page_size: u64, limits: Limits) -> Self {
        Resources {
            resources: IdMap::default(),
            total_entries: 0,
            mappings: BTreeMap::new(),
            shm_size,
            page_size,
            limits,
        }
    }

    /// Forget every resource and mapping (the VMM's region goes with the device).
    pub(super) fn clear(&mut self) {
        self.resources.clear();
        self.mappings.clear();
        self.total_entries = 0;
    }

    /// Fails with `InvalidResource` unless `id` names a resource.
    pub(super) fn check_exists(&self, id: u32) -> Result<(), GpuError> {
        self.existing(id).map(|_| ())
    }

    fn existing(&self, id: u32) -> Result<&Resource, GpuError> {
        self.resources.get(&id).ok_or(GpuError::InvalidResource(id))
    }

    /// Width and height of the 2D resource `id`.
    pub(super) fn dims_2d(&self, id: u32) -> Result<(u32, u32), GpuError> {
        match self.existing(id)?.kind {
            Kind::TwoD { width, height } => Ok((width, height)),
            _ => Err(GpuError::InvalidParameter("resource is not a 2D resource")),
        }
    }

    /// What a cross-domain context sees of the resources: those in its `attached` set.
    pub(super) fn view<'a>(&'a self, attached: &'a IdSet<u32>) -> View<'a> {
        View {
            resources: &self.resources,
            attached,
        }
    }

    /// RESOURCE_CREATE_2D.
    pub(super) fn create_2d(&mut self, b: &ResourceCreate2d) -> Result<(), GpuError> {
        if !is_2d_format(b.format) {
            return Err(GpuError::InvalidParameter("unknown 2D format"));
        }
        if b.width == 0 || b.height == 0 {
            return Err(GpuError::InvalidParameter("zero-sized 2D resource"));
        }
        self.insert(
            b.resource_id,
            Resource {
                kind: Kind::TwoD {
                    width: b.width,
                    height: b.height,
                },
                backing: None,
            },
        )
    }

    /// RESOURCE_UNREF: unmap (a failure is logged, the guest is done with the resource either
    /// way) and forget resource `id`.
    pub(super) fn unref(
        &mut self,
        id: u32,
        mapper: &dyn ShmMapper,
        limiter: &mut GuestLog,
    ) -> Result<(), GpuError> {
        self.existing(id)?;
        if let Err(e) = self.unmap(id, mapper) {
            // The guest is done with the resource either way; the region slot stays
            // reserved if the VMM kept the mapping.
            if !matches!(e, GpuError::InvalidParameter(_)) {
                guest_warn!(limiter, "unmapping resource {} on UNREF: {e}", id);
            }
        }
        let res = self
            .resources
            .remove(&id)
            .ok_or(GpuError::InvalidResource(id))?;
        self.total_entries -= res.entries();
        Ok(())
    }

    /// RESOURCE_ATTACH_BACKING: the entries at `entries` of `req` become `id`'s backing.
    pub(super) fn attach_backing(
        &mut self,
        mem: &GuestMem,
        req: &SgList,
        id: u32,
        entries: BackingEntries,
    ) -> Result<(), GpuError> {
        self.existing(id)?;
        let sg = self.read_entries(mem, req, entries)?;
        let old = self.resources.get(&id).map_or(0, Resource::entries);
        self.check_entry_budget(sg.segments(), old)?;
        self.total_entries = self.total_entries - old + sg.segments();
        if let Some(r) = self.resources.get_mut(&id) {
            r.backing = Some(sg);
        }
        Ok(())
    }

    /// RESOURCE_DETACH_BACKING.
    pub(super) fn detach_backing(&mut self, id: u32) -> Result<(), GpuError> {
        let r = self
            .resources
            .get_mut(&id)
            .ok_or(GpuError::InvalidResource(id))?;
        let n = r.entries();
        r.backing = None;
        self.total_entries -= n;
        Ok(())
    }

    fn insert(&mut self, id: u32, res: Resource) -> Result<(), GpuError> {
        if id == 0 {
            return Err(GpuError::InvalidResource(0));
        }
        if self.resources.contains_key(&id) {
            return Err(GpuError::ResourceExists(id));
        }
        if self.resources.len() >= self.limits.max_resources {
            return Err(GpuError::Limit(
                LimitKind::ResourcesPerVm,
                self.limits.max_resources,
            ));
        }
        self.total_entries += res.entries();
        self.resources.insert(id, res);
        Ok(())
    }

    fn check_entry_budget(&self, new: usize, replacing: usize) -> Result<(), GpuError> {
        if self.total_entries - replacing + new > self.limits.max_total_entries {
            return Err(GpuError::Limit(
                LimitKind::EntriesPerVm,
                self.limits.max_total_entries,
            ));
        }
        Ok(())
    }

    fn read_entries(
        &self,
        mem: &GuestMem,
        req: &SgList,
        entries: BackingEntries,
    ) -> Result<SgList, GpuError> {
        let (base, nr) = (entries.offset, entries.count as usize);
        if nr == 0 {
            return Err(GpuError::InvalidParameter("no backing entries"));
        }
        if nr > self.limits.max_entries_per_resource {
            return Err(GpuError::Limit(
                LimitKind::EntriesPerResource,
                self.limits.max_entries_per_resource,
            ));
        }
        let entry = std::mem::size_of::<MemEntry>();
        let need = base + nr * entry;
        if req.len() < need {
            return Err(GpuError::ShortRequest {
                have: req.len(),
                need,
            });
        }
        let mut sg = SgList::new();
        for i in 0..nr {
            let e: MemEntry = req
                .read_obj(mem, base + i * entry)
                .map_err(|_| GpuError::InvalidParameter("entries not readable"))?;
            if e.length == 0 || !range_is_valid(mem, e.addr, e.length as usize) {
                return Err(GpuError::BadEntry {
                    index: i,
                    addr: e.addr,
                    len: e.length,
                });
            }
            sg.push(GuestAddress(e.addr), e.length as usize);
        }
        Ok(sg)
    }

    /// RESOURCE_MAP_BLOB: place a host blob at `offset` of the host-visible region.
    pub(super) fn map(
        &mut self,
        res_id: u32,
        offset: u64,
        mapper: &dyn ShmMapper,
    ) -> Result<u32, GpuError> {
        let page = self.page_size;
        let res = self
            .resources
            .get(&res_id)
            .ok_or(GpuError::InvalidResource(res_id))?;
        let Kind::HostBlob(host) = &res.kind else {
            return Err(GpuError::InvalidParameter(
                "only host-backed (HOST3D) blobs can be mapped",
            ));
        };
        if host.mapped.is_some() {
            return Err(GpuError::InvalidParameter("resource is already mapped"));
        }
        let len = host.size.div_ceil(page) * page;
        if offset % page != 0 {
            return Err(GpuError::InvalidParameter(
                "offset is not aligned to the host page size",
            ));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.shm_size => {
                if let Some((&start, &(l, _))) = self.mappings.range(..end).next_back() {
                    if start + l > offset {
                        return Err(GpuError::InvalidParameter("range overlaps a live mapping"));
                    }
                }
            }
            _ => {
                return Err(GpuError::InvalidParameter(
                    "range exceeds the host-visible region",
                ))
            }
        }
        if self.mappings.len() >= self.limits.max_mappings {
            // A request the VMM would refuse (crosvm ends the VM on that) is never sent.
            return Err(GpuError::Limit(
                LimitKind::MappingsPerVm,
                self.limits.max_mappings,
            ));
        }
        mapper
            .map(host.fd.as_fd(), offset, len, host.writable)
            .map_err(GpuError::Map)?;
        let map_info = host.map_info;
        if let Some(Resource {
            kind: Kind::HostBlob(h),
            ..
        }) = self.resources.get_mut(&res_id)
        {
            h.mapped = Some((offset, len));
        }
        self.mappings.insert(offset, (len, res_id));
        Ok(map_info)
    }

    /// RESOURCE_UNMAP_BLOB (and UNREF of a mapped blob).
    pub(super) fn unmap(&mut self, res_id: u32, mapper: &dyn ShmMapper) -> Result<(), GpuError> {
        let Some(Resource {
            kind: Kind::HostBlob(host),
            ..
        }) = self.resources.get_mut(&res_id)
        else {
            return Err(GpuError::InvalidParameter("resource is not mapped"));
        };
        let Some((offset, len)) = host.mapped else {
            return Err(GpuError::InvalidParameter("resource is not mapped"));
        };
        mapper.unmap(offset, len).map_err(GpuError::Map)?;
        host.mapped = None;
        self.mappings.remove(&offset);
        Ok(())
    }

    /// RESOURCE_CREATE_BLOB. A guest blob takes the entries at `entries` of `req` as its
    /// backing; a HOST3D blob takes the memory `take_host(blob_id, size)` hands over (the
    /// creating context's), called only once every check of the request passed.
    pub(super) fn create_blob(
        &mut self,
        mem: &GuestMem,
        req: &SgList,
        b: &ResourceCreateBlob,
        entries: BackingEntries,
        take_host: impl FnOnce(u32, u64) -> Result<HostBlob, GpuError>,
    ) -> Result<(), GpuError> {
        if b.resource_id == 0 {
            return Err(GpuError::InvalidResource(0));
        }
        if self.resources.contains_key(&b.resource_id) {
            return Err(GpuError::ResourceExists(b.resource_id));
        }
        let known = BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE | BLOB_FLAG_USE_CROSS_DEVICE;
        if b.blob_flags & !known != 0 {
            return Err(GpuError::InvalidParameter("unknown blob flags"));
        }
        match b.blob_mem {
            BLOB_MEM_GUEST => {}
            BLOB_MEM_HOST3D => return self.create_host_blob(b, take_host),
            BLOB_MEM_HOST3D_GUEST => {
                return Err(GpuError::Unsupported(
                    "HOST3D_GUEST blobs need a 3D renderer",
                ))
            }
            _ => return Err(GpuError::InvalidParameter("unknown blob_mem")),
        }
        let sg = self.read_entries(mem, req, entries)?;
        if b.size == 0 || b.size > sg.len() as u64 {
            return Err(GpuError::InvalidParameter(
                "blob size is zero or larger than its backing",
            ));
        }
        self.check_entry_budget(sg.segments(), 0)?;
        self.insert(
            b.resource_id,
            Resource {
                kind: Kind::GuestBlob,
                backing: Some(sg),
            },
        )
    }

    /// RESOURCE_CREATE_BLOB(HOST3D): memory named by `blob_id` in the creating context.
    fn create_host_blob(
        &mut self,
        b: &ResourceCreateBlob,
        take_host: impl FnOnce(u32, u64) -> Result<HostBlob, GpuError>,
    ) -> Result<(), GpuError> {
        if b.nr_entries != 0 {
            return Err(GpuError::InvalidParameter(
                "host blobs take no backing entries",
            ));
        }
        if b.size == 0 {
            return Err(GpuError::InvalidParameter("zero-sized blob"));
        }
        let blob_id = u32::try_from(b.blob_id)
            .map_err(|_| GpuError::InvalidParameter("blob_id does not fit 32 bits"))?;
        if self.resources.len() >= self.limits.max_resources {
            return Err(GpuError::Limit(
                LimitKind::ResourcesPerVm,
                self.limits.max_resources,
            ));
        }
        let (fd, map_info, writable) = take_host(blob_id, b.size)?;
        self.insert(
            b.resource_id,
            Resource {
                kind: Kind::HostBlob(HostMem {
                    fd,
                    size: b.size,
                    map_info,
                    writable,
                    mapped: None,
                }),
                backing: None,
            },
        )
    }
}

/// The resources one context has attached, as the cross-domain layer sees them.
pub(super) struct View<'a> {
    resources: &'a IdMap<u32, Resource>,
    attached: &'a IdSet<u32>,
}

impl ResourceView for View<'_> {
    fn lookup(&self, res_id: u32) -> Lookup<'_> {
        if !self.attached.contains(&res_id) {
            return Lookup::NotAttached;
        }
        match self.resources.get(&res_id) {
            None => Lookup::NotAttached,
            Some(Resource {
                kind: Kind::HostBlob(h),
                ..
            }) => Lookup::Host(h.fd.as_fd()),
            Some(Resource {
                backing: Some(sg), ..
            }) => Lookup::Guest(sg),
            Some(_) => Lookup::Unbacked,
        }
    }
}

fn is_2d_format(f: u32) -> bool {
    // B8G8R8A8, B8G8R8X8, A8R8G8B8, X8R8G8B8, R8G8B8A8, X8B8G8R8, A8B8G8R8, R8G8B8X8.
    matches!(f, 1 | 2 | 3 | 4 | 67 | 68 | 121 | 134)
}

#[cfg(test)]
mod tests;
