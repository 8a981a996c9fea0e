//! `--accuracy-file`: runs `sageattn` on every `<name>.q/.k/.v` of a .safetensors file and writes
//! `<name>.o` (for `scripts/compare.py`), reading and writing through the library's
//! [`tensor_file`].

use sageattention::tensor_file::{self, FileDType};
use sageattention::{sageattn, DType, Options, Runtime, Tensor};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::args::Args;
use super::error::BenchError;

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("`{s}` is not a boolean")),
    }
}

/// Case names of an accuracy file: every `<name>` with a `<name>.q` tensor, sorted.
fn accuracy_cases<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = names
        .into_iter()
        .filter_map(|n| n.strip_suffix(".q").map(String::from))
        .collect();
    v.sort();
    v.dedup();
    v
}

pub fn accuracy_file(
    rt: &Runtime,
    args: &Args,
    input: &Path,
    output: &Path,
) -> Result<(), BenchError> {
    let io = |what: &str, e: &dyn fmt::Display| {
        BenchError::Io(format!("{what} {}: {e}", input.display()))
    };
    let bytes = std::fs::read(input).map_err(|e| io("reading", &e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| io("parsing", &e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| io("parsing", &e))?;
    let meta: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
    let names: Vec<String> = st.names().into_iter().cloned().collect();
    let cases = accuracy_cases(names.iter().map(String::as_str));
    if cases.is_empty() {
        return Err(BenchError::Io(format!(
            "{}: no `<name>.q` tensor",
            input.display()
        )));
    }
    let mut results: Vec<(String, Vec<usize>, DType, Vec<u8>)> = Vec::new();
    for name in &cases {
        let bad = |m: String| BenchError::Io(format!("{}: case `{name}`: {m}", input.display()));
        let mut tensors = Vec::new();
        for part in ["q", "k", "v"] {
            let t = st
                .tensor(&format!("{name}.{part}"))
                .map_err(|e| bad(format!("{part}: {e}")))?;
            let shape: [usize; 4] = t
                .shape()
                .try_into()
                .map_err(|_| bad(format!("{part} has shape {:?}, needs 4 dims", t.shape())))?;
            let (data, file_dtype) = tensor_file::decode(&t).map_err(|d| {
                bad(format!(
                    "{part}: dtype {d:?} is not supported ({})",
                    FileDType::SUPPORTED
                ))
            })?;
            let dtype = match file_dtype {
                FileDType::F32 => args.dtype(),
                other => other.gpu_dtype(),
            };
            tensors.push((shape, data, dtype));
        }
        let dtype = tensors[0].2;
        let get = |key: &str| meta.get(&format!("{name}.{key}"));
        let causal = get("causal")
            .map(|s| parse_bool(s))
            .transpose()
            .map_err(bad)?
            .unwrap_or(false);
        let smooth_k = get("smooth_k")
            .map(|s| parse_bool(s))
            .transpose()
            .map_err(bad)?
            .unwrap_or(!args.no_smooth_k);
        let sm_scale = get("sm_scale")
            .map(|s| {
                s.trim()
                    .parse::<f32>()
                    .map_err(|e| format!("sm_scale `{s}`: {e}"))
            })
            .transpose()
            .map_err(bad)?;
        let layout = args.layout();
        let up = |(shape, data, _): &([usize; 4], Vec<f32>, DType)| {
            Tensor::from_host_f32(rt, data, dtype, *shape, layout)
        };
        let (q, k, v) = (up(&tensors[0])?, up(&tensors[1])?, up(&tensors[2])?);
        let opts = Options {
            smooth_k,
            sm_scale,
            ..args.options(causal)
        };
        let out = sageattn(rt, &q.view(), &k.view(), &v.view(), &opts)?;
        let o = out.o.to_host_f32(rt)?;
        if !args.quiet {
            eprintln!(
                "accuracy: {name}: q {:?} k {:?} {dtype} causal={causal} smooth_k={smooth_k} pv={}",
                tensors[0].0,
                tensors[1].0,
                args.pv_precision_name()
            );
        }
        results.push((
            format!("{name}.o"),
            tensors[0].0.to_vec(),
            dtype,
            tensor_file::encode(&o, file_dtype(dtype)),
        ));
    }
    let views = results
        .iter()
        .map(|(n, shape, dt, data)| {
            let sdt = file_dtype(*dt).to_safetensors();
            safetensors::tensor::TensorView::new(sdt, shape.clone(), data).map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BenchError::Io(format!("building the output: {e}")))?;
    let info = Some(HashMap::from([(
        "tool".to_string(),
        "sageattention-bench".to_string(),
    )]));
    safetensors::serialize_to_file(views, &info, output)
        .map_err(|e| BenchError::Io(format!("writing {}: {e}", output.display())))?;
    println!(
        "accuracy: wrote {} output(s) to {}",
        results.len(),
        output.display()
    );
    Ok(())
}

pub fn default_accuracy_out(input: &Path) -> PathBuf {
    let s = input.to_string_lossy();
    let stem = s.strip_suffix(".safetensors").unwrap_or(&s);
    PathBuf::from(format!("{stem}.out.safetensors"))
}

/// The file type the outputs of a `dtype` (f16 or bf16) run are written as.
fn file_dtype(dtype: DType) -> FileDType {
    if dtype == DType::BF16 {
        FileDType::BF16
    } else {
        FileDType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_file_helpers() {
        assert_eq!(
            accuracy_cases(["b.q", "b.k", "a.q", "a.v", "c.o", "a.q"]),
            ["a", "b"]
        );
        assert_eq!(parse_bool("True"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("2").is_err());
        assert_eq!(
            default_accuracy_out(Path::new("/t/acc.safetensors")),
            PathBuf::from("/t/acc.out.safetensors")
        );
    }
}
