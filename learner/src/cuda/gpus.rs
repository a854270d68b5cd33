//! Which GPUs a run uses: the `--gpus` list (`train.gpus`), checked against the machine.
//!
//! The driver library is probed before anything touches CUDA (calling into a missing `libcuda`
//! would panic inside cudarc), so every wrong list is one readable line, never a crash.

use std::fmt;

/// A `--gpus` value: GPU indices, or every GPU of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuList {
    All,
    Listed(Vec<usize>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    #[error("--gpus {0:?}: expected GPU indices separated by commas (0 or 0,1) or \"all\"")]
    Syntax(String),
    #[error("--gpus {spec}: lists GPU {gpu} twice")]
    Duplicate { spec: String, gpu: usize },
    #[error("--gpus {0}: no CUDA driver (libcuda) on this machine; omit --gpus to train on the CPU")]
    NoDriver(String),
    #[error("--gpus {spec}: GPU {gpu} does not exist ({})", machine(*.count))]
    Missing { spec: String, gpu: usize, count: usize },
    #[error("--gpus {0}: the CUDA driver could not count the GPUs: {1}")]
    Driver(String, String),
}

fn machine(count: usize) -> String {
    match count {
        0 => "this machine has no GPU".into(),
        1 => "this machine has 1 GPU, 0".into(),
        n => format!("this machine has {n} GPUs, 0 to {}", n - 1),
    }
}

impl fmt::Display for GpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuList::All => f.write_str("all"),
            GpuList::Listed(l) => {
                let s: Vec<String> = l.iter().map(|g| g.to_string()).collect();
                f.write_str(&s.join(","))
            }
        }
    }
}

/// Parses `0`, `0,1` or `all` (spaces around the commas allowed).
pub fn parse(spec: &str) -> Result<GpuList, GpuError> {
    let s = spec.trim();
    if s == "all" {
        return Ok(GpuList::All);
    }
    let mut list = Vec::new();
    for part in s.split(',') {
        let gpu: usize = part.trim().parse().map_err(|_| GpuError::Syntax(spec.to_string()))?;
        if list.contains(&gpu) {
            return Err(GpuError::Duplicate { spec: spec.to_string(), gpu });
        }
        list.push(gpu);
    }
    Ok(GpuList::Listed(list))
}

/// The GPUs of `list` on a machine with `count` GPUs (`None`: no driver).
pub fn resolve(spec: &str, list: &GpuList, count: Option<usize>) -> Result<Vec<usize>, GpuError> {
    let Some(count) = count else { return Err(GpuError::NoDriver(spec.to_string())) };
    let gpus = match list {
        GpuList::All if count == 0 => return Err(GpuError::Missing { spec: spec.to_string(), gpu: 0, count }),
        GpuList::All => (0..count).collect(),
        GpuList::Listed(l) => l.clone(),
    };
    if let Some(&gpu) = gpus.iter().find(|&&g| g >= count) {
        return Err(GpuError::Missing { spec: spec.to_string(), gpu, count });
    }
    Ok(gpus)
}

/// The GPUs `spec` names on this machine.
pub fn select(spec: &str) -> Result<Vec<usize>, GpuError> {
    let list = parse(spec)?;
    let count = if super::driver::driver_present() {
        let n =
            cudarc::driver::CudaContext::device_count().map_err(|e| GpuError::Driver(spec.into(), format!("{e:?}")))?;
        Some(n.max(0) as usize)
    } else {
        None
    };
    resolve(spec, &list, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        assert_eq!(parse("all"), Ok(GpuList::All));
        assert_eq!(parse("0"), Ok(GpuList::Listed(vec![0])));
        assert_eq!(parse("0, 1"), Ok(GpuList::Listed(vec![0, 1])));
        assert_eq!(parse("0,1").unwrap().to_string(), "0,1");
        for bad in ["", "x", "0,", "-1", "0;1", "1.5"] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e, GpuError::Syntax(bad.into()));
            assert!(e.to_string().contains("expected GPU indices"), "{e}");
        }
        let e = parse("1,1").unwrap_err().to_string();
        assert_eq!(e, "--gpus 1,1: lists GPU 1 twice");
    }

    #[test]
    fn lists_resolve_against_the_machine() {
        let l = parse("0,1").unwrap();
        assert_eq!(resolve("0,1", &l, Some(2)), Ok(vec![0, 1]));
        assert_eq!(resolve("all", &GpuList::All, Some(3)), Ok(vec![0, 1, 2]));
        let e = resolve("0,1", &l, None).unwrap_err().to_string();
        assert_eq!(e, "--gpus 0,1: no CUDA driver (libcuda) on this machine; omit --gpus to train on the CPU");
        let e = resolve("0,1", &l, Some(1)).unwrap_err().to_string();
        assert_eq!(e, "--gpus 0,1: GPU 1 does not exist (this machine has 1 GPU, 0)");
        let e = resolve("3", &parse("3").unwrap(), Some(2)).unwrap_err().to_string();
        assert_eq!(e, "--gpus 3: GPU 3 does not exist (this machine has 2 GPUs, 0 to 1)");
        let e = resolve("all", &GpuList::All, Some(0)).unwrap_err().to_string();
        assert!(e.contains("this machine has no GPU"), "{e}");
    }

    /// On a machine without a driver (CI), selecting says so instead of crashing; with one, an
    /// existing GPU is accepted.
    #[test]
    fn selecting_never_panics() {
        match select("0") {
            Ok(g) => assert_eq!(g, vec![0]),
            Err(e) => {
                let s = e.to_string();
                assert!(s.contains("no CUDA driver") || s.contains("does not exist"), "{s}");
            }
        }
        if !super::super::driver::driver_present() {
            assert_eq!(select("0,1").unwrap_err(), GpuError::NoDriver("0,1".into()));
        }
    }
}
