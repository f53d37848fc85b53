//! The MPS stream-pool patches this crate ships (`patches/v<VERSION>/`), one per libtorch version,
//! and the id each one compiles into a patched libtorch (`tch_streams_mps_patch_id()`).
//!
//! The id is `tch-streams-mps/` followed by the first 16 hex digits of the sha256 of the version's
//! cumulative patch file, exactly as `scripts/build-libtorch.sh --print-id` computes it, so a
//! library built from another revision of the patch, or from the other version's patch, does not
//! pass `--require patched`.
//!
//! ```
//! use tch_streams::runtime::expected_mps_patch_id;
//! let id = expected_mps_patch_id("2.13.0").unwrap();
//! assert!(id.starts_with("tch-streams-mps/") && id.len() == "tch-streams-mps/".len() + 16);
//! assert_ne!(Some(id), expected_mps_patch_id("2.11.0"));
//! assert_eq!(expected_mps_patch_id("2.12.0"), None); // no patch for this version
//! ```

use sha2::{Digest, Sha256};

/// (libtorch version, cumulative patch file) for every version the project patches.
const PATCHES: [(&str, &[u8]); 2] = [
    ("2.11.0", include_bytes!("../../../../patches/v2.11.0/tch-streams-mps-v2.11.0.patch")),
    ("2.13.0", include_bytes!("../../../../patches/v2.13.0/tch-streams-mps-v2.13.0.patch")),
];

/// The libtorch versions that have an MPS patch.
pub fn mps_patch_versions() -> impl Iterator<Item = &'static str> {
    PATCHES.iter().map(|(v, _)| *v)
}

/// The patch id a patched libtorch of `torch_version` must report, or `None` when the project has
/// no MPS patch for that version. A local-version suffix (`2.13.0+cpu`) is ignored.
pub fn expected_mps_patch_id(torch_version: &str) -> Option<String> {
    let version = torch_version.split('+').next().unwrap_or(torch_version).trim();
    PATCHES.iter().find(|(v, _)| *v == version).map(|(_, patch)| {
        let digest = Sha256::digest(patch);
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("tch-streams-mps/{hex}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_version_has_its_own_id() {
        let ids: Vec<String> = mps_patch_versions().map(|v| expected_mps_patch_id(v).unwrap()).collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        for id in &ids {
            let hex = id.strip_prefix("tch-streams-mps/").expect("prefix");
            assert_eq!(hex.len(), 16);
            assert!(hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
    }

    #[test]
    fn local_version_suffix_is_ignored_and_unknown_versions_have_none() {
        assert_eq!(expected_mps_patch_id("2.11.0+cpu"), expected_mps_patch_id("2.11.0"));
        assert_eq!(expected_mps_patch_id("2.12.0"), None);
        assert_eq!(expected_mps_patch_id(""), None);
    }
}
