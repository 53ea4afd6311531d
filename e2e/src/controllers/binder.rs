use crate::api::store::Store;
use std::sync::Arc;
pub fn sweep(_s: &Arc<Store>) -> anyhow::Result<()> {
    Ok(())
}
