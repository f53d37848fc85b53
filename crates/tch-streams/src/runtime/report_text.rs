//! Human-readable rendering of a verifier [`Report`].

use super::Report;
use std::fmt;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.built;
        let l = &self.loaded;
        writeln!(f, "tch-streams preflight")?;
        writeln!(f, "  built against   {} (libtorch {})", b.lib_dir, b.torch_version)?;
        writeln!(f, "    libtorch_cpu  sha256 {}", b.cpu_sha256)?;
        if let Some(c) = &b.cuda_sha256 {
            writeln!(f, "    libtorch_cuda sha256 {c}")?;
        }
        writeln!(f, "    libraries     {} recorded ({})", b.libs.len(), b.libs.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", "))?;
        writeln!(f, "    patch         {}", b.patch_id.as_deref().unwrap_or("none (stock libtorch)"))?;
        writeln!(f, "  loaded")?;
        writeln!(f, "    libtorch_cpu  {}", l.cpu.path)?;
        writeln!(f, "                  sha256 {}", l.cpu.sha256)?;
        match &l.cuda {
            Some(c) => writeln!(f, "    libtorch_cuda {}\n                  sha256 {}", c.path, c.sha256)?,
            None => writeln!(f, "    libtorch_cuda not loaded")?,
        }
        writeln!(f, "    cuda backend  {}", l.cuda_load)?;
        let checked: Vec<&str> = l.libs.iter().map(|x| super::fingerprint::file_name(&x.path)).collect();
        writeln!(f, "    fingerprinted {} mapped libtorch libraries ({})", checked.len(), checked.join(", "))?;
        writeln!(
            f,
            "    version       {} (shim headers {})",
            l.loaded_version.as_deref().unwrap_or("?"),
            l.compiled_version
        )?;
        writeln!(f, "    patch marker  {}", l.patch_marker.as_deref().unwrap_or("none"))?;
        let names = if l.cuda_device_names.is_empty() { String::new() } else { format!(": {}", l.cuda_device_names.join(", ")) };
        writeln!(f, "    cuda          {} ({} device(s){names})", yes_no(l.cuda_available), l.cuda_device_count)?;
        writeln!(f, "    mps           {}", yes_no(l.mps_available))?;
        writeln!(f, "  stream pools (probed by behaviour)")?;
        for p in &self.probes {
            writeln!(f, "    {:<5} {}", p.backend.to_string(), p.probe)?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        for w in &self.warnings {
            writeln!(f, "  WARNING: {w}")?;
        }
        Ok(())
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
