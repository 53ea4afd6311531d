use crate::api::store::Store;
use std::path::PathBuf;
use std::sync::Arc;
#[derive(Debug)]
pub struct Provisioner;
impl Provisioner {
    pub fn new(_s: Arc<Store>, _d: PathBuf) -> Self {
        Provisioner
    }
    pub async fn sweep(&self) -> anyhow::Result<()> {
        Ok(())
    }
}
