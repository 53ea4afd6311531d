//! Loopback addresses for nodes and pods, unique per cluster on this host.
//!
//! Pods listen on their own address the way they would on a real pod network, so two
//! clusters running at once (parallel tests) must not hand out the same one. Each cluster
//! leases a block of 127.0.0.0/8 by holding an exclusive lock on a file named after it;
//! the kernel drops the lock when the process dies, so a crashed run leaks nothing.

use std::fs::File;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

/// Blocks 1..=BLOCKS: block `b` uses 127.(2b).x.x for nodes and 127.(2b+1).x.x for pods;
/// the upper half of the node range, 127.(2b).128.0/17, holds Service ClusterIPs.
const BLOCKS: u8 = 126;
/// How many ClusterIPs one block has.
const SERVICE_IPS: u32 = 128 * 254;

#[derive(Debug)]
pub struct AddressBlock {
    block: u8,
    _lease: Flock<File>,
}

impl AddressBlock {
    /// Leases the first free block.
    ///
    /// # Errors
    /// When the lock directory cannot be written or every block is taken.
    pub fn lease() -> anyhow::Result<AddressBlock> {
        let dir = lease_dir();
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        for block in 1..=BLOCKS {
            let path = dir.join(format!("{block}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
            if let Ok(lease) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Ok(AddressBlock { block, _lease: lease });
            }
        }
        anyhow::bail!("all {BLOCKS} loopback address blocks are in use by other clusters (locks in {})", dir.display())
    }

    /// The address of node `i` (1-based).
    pub fn node_ip(&self, i: usize) -> String {
        format!("127.{}.{}.1", 2 * self.block, i % 256)
    }

    /// The `n`th pod address on node `i`.
    pub fn pod_ip(&self, i: usize, n: u32) -> String {
        format!("127.{}.{}.{}", 2 * self.block + 1, i % 256, n % 253 + 2)
    }

    /// The `n`th Service ClusterIP (`None` past the end of the range).
    pub fn service_ip(block: u8, n: u32) -> Option<String> {
        (n < SERVICE_IPS).then(|| format!("127.{}.{}.{}", 2 * block, 128 + n / 254, n % 254 + 1))
    }

    pub fn index(&self) -> u8 {
        self.block
    }
}

fn lease_dir() -> PathBuf {
    std::env::temp_dir().join("cdi-e2e-address-blocks")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leases_get_different_blocks_and_a_dropped_one_is_reused() {
        let a = AddressBlock::lease().unwrap();
        let b = AddressBlock::lease().unwrap();
        assert_ne!(a.node_ip(1), b.node_ip(1));
        assert_ne!(a.pod_ip(1, 0), b.pod_ip(1, 0));
        assert_ne!(a.node_ip(1), a.pod_ip(1, 0));
        drop(a);
        let c = AddressBlock::lease().unwrap();
        assert_ne!(c.index(), b.index(), "a held block was handed out twice");
    }
}
