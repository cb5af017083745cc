//! Tensors as the protocol carries them: a name, a datatype, a shape and the
//! elements, decoded from typed contents, raw little-endian bytes or JSON, and encoded
//! back for the answer.

use bytes::Bytes;

use super::error::InferError;

/// The element types streamscore reads and writes (others are refused by name).
#[derive(Debug, Clone, PartialEq)]
pub enum Elements {
    Bytes(Vec<Bytes>),
    Fp64(Vec<f64>),
    Fp32(Vec<f32>),
}

impl Elements {
    pub fn len(&self) -> usize {
        match self {
            Elements::Bytes(v) => v.len(),
            Elements::Fp64(v) => v.len(),
            Elements::Fp32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The protocol's name of the datatype.
    pub fn datatype(&self) -> &'static str {
        match self {
            Elements::Bytes(_) => "BYTES",
            Elements::Fp64(_) => "FP64",
            Elements::Fp32(_) => "FP32",
        }
    }

    /// Element `index` as a number, when numeric.
    pub fn number(&self, index: usize) -> Option<f64> {
        match self {
            Elements::Fp64(v) => v.get(index).copied(),
            Elements::Fp32(v) => v.get(index).map(|x| f64::from(*x)),
            Elements::Bytes(_) => None,
        }
    }

    /// Decodes raw contents: little-endian elements without padding; a BYTES element
    /// is a 4-byte little-endian length, then that many bytes.
    pub fn from_raw(tensor: &str, datatype: &str, raw: &Bytes) -> Result<Elements, InferError> {
        let fixed = |width: usize| -> Result<(), InferError> {
            if raw.len().is_multiple_of(width) {
                Ok(())
            } else {
                Err(InferError::tensor(
                    tensor,
                    format!(
                        "raw contents of {} bytes are not whole {datatype} elements of {width} bytes",
                        raw.len()
                    ),
                ))
            }
        };
        match datatype {
            "FP64" => {
                fixed(8)?;
                Ok(Elements::Fp64(
                    raw.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect(),
                ))
            }
            "FP32" => {
                fixed(4)?;
                Ok(Elements::Fp32(
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
                        .collect(),
                ))
            }
            "BYTES" => {
                let mut elements = Vec::new();
                let mut at = 0usize;
                while at < raw.len() {
                    let Some(head) = raw.get(at..at + 4) else {
                        return Err(InferError::tensor(
                            tensor,
                            format!(
                                "raw BYTES contents end inside the length of element {}",
                                elements.len()
                            ),
                        ));
                    };
                    let length = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                    let start = at + 4;
                    let Some(end) = start.checked_add(length).filter(|end| *end <= raw.len())
                    else {
                        return Err(InferError::tensor(
                            tensor,
                            format!(
                                "raw BYTES element {} declares {length} bytes, {} are left",
                                elements.len(),
                                raw.len() - start
                            ),
                        ));
                    };
                    elements.push(raw.slice(start..end));
                    at = end;
                }
                Ok(Elements::Bytes(elements))
            }
            other => Err(unsupported(tensor, other)),
        }
    }

    /// Encodes as raw contents (see [`Elements::from_raw`]).
    pub fn to_raw(&self) -> Bytes {
        let mut out = Vec::new();
        match self {
            Elements::Fp64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Elements::Fp32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Elements::Bytes(v) => {
                for element in v {
                    // Our own outputs are short strings; a length over u32 cannot occur.
                    out.extend_from_slice(&(element.len() as u32).to_le_bytes());
                    out.extend_from_slice(element);
                }
            }
        }
        Bytes::from(out)
    }

    /// Decodes JSON `data` (flat, or nested by the shape) of `datatype`.
    pub fn from_json(
        tensor: &str,
        datatype: &str,
        data: &serde_json::Value,
    ) -> Result<Elements, InferError> {
        let mut flat = Vec::new();
        flatten(data, &mut flat);
        let not = |index: usize, what: &str| {
            InferError::tensor(tensor, format!("element {index} is not {what}"))
        };
        match datatype {
            "FP64" | "FP32" => {
                let mut numbers = Vec::with_capacity(flat.len());
                for (index, value) in flat.iter().enumerate() {
                    numbers.push(value.as_f64().ok_or_else(|| not(index, "a number"))?);
                }
                Ok(if datatype == "FP64" {
                    Elements::Fp64(numbers)
                } else {
                    Elements::Fp32(numbers.into_iter().map(|x| x as f32).collect())
                })
            }
            "BYTES" => {
                let mut strings = Vec::with_capacity(flat.len());
                for (index, value) in flat.iter().enumerate() {
                    let text = value.as_str().ok_or_else(|| not(index, "a string"))?;
                    strings.push(Bytes::copy_from_slice(text.as_bytes()));
                }
                Ok(Elements::Bytes(strings))
            }
            other => Err(unsupported(tensor, other)),
        }
    }

    /// As JSON `data`, flat.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Elements::Fp64(v) => serde_json::json!(v),
            Elements::Fp32(v) => serde_json::json!(v),
            Elements::Bytes(v) => serde_json::Value::Array(
                v.iter()
                    .map(|b| serde_json::Value::String(String::from_utf8_lossy(b).into_owned()))
                    .collect(),
            ),
        }
    }
}

fn flatten<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match value {
        serde_json::Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        other => out.push(other),
    }
}

fn unsupported(tensor: &str, datatype: &str) -> InferError {
    InferError::tensor(
        tensor,
        format!("datatype {datatype:?} is not served here (FP64, FP32 or BYTES)"),
    )
}

/// One tensor of a request or an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub elements: Elements,
}

impl Tensor {
    pub fn new(name: &str, shape: Vec<i64>, elements: Elements) -> Tensor {
        Tensor {
            name: name.to_string(),
            datatype: elements.datatype().to_string(),
            shape,
            elements,
        }
    }

    /// Elements the shape says there are, refused when a dimension is negative or the
    /// product overflows.
    pub fn declared_len(&self) -> Result<usize, InferError> {
        let mut product: usize = 1;
        for dimension in &self.shape {
            let dimension = usize::try_from(*dimension).map_err(|_| {
                InferError::tensor(
                    &self.name,
                    format!("shape {:?} has a negative dimension", self.shape),
                )
            })?;
            product = product.checked_mul(dimension).ok_or_else(|| {
                InferError::tensor(&self.name, format!("shape {:?} is too large", self.shape))
            })?;
        }
        Ok(product)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_contents_round_trip_and_truncations_are_refused_at_every_length() {
        for elements in [
            Elements::Fp64(vec![1.5, -0.0, f64::MAX]),
            Elements::Fp32(vec![2.25, 7.0]),
            Elements::Bytes(vec![
                Bytes::from_static(b"u1"),
                Bytes::new(),
                Bytes::from_static(b"card-77"),
            ]),
        ] {
            let raw = elements.to_raw();
            let back = Elements::from_raw("t", elements.datatype(), &raw).expect("decodes");
            assert_eq!(back, elements);
            for cut in 1..raw.len() {
                let short = raw.slice(..cut);
                if let Ok(decoded) = Elements::from_raw("t", elements.datatype(), &short) {
                    // A cut on an element boundary is a shorter tensor, never garbage.
                    assert!(decoded.len() < elements.len(), "{cut}: {decoded:?}");
                }
            }
        }
    }

    #[test]
    fn a_bytes_length_past_the_end_is_named() {
        let mut raw = 1_000u32.to_le_bytes().to_vec();
        raw.extend_from_slice(b"abc");
        let error = Elements::from_raw("user", "BYTES", &Bytes::from(raw)).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "user: raw BYTES element 0 declares 1000 bytes, 3 are left"
        );
    }

    #[test]
    fn json_data_may_be_nested_and_must_match_the_datatype() {
        let nested = serde_json::json!([[1.0, 2.0], [3.0, 4.5]]);
        assert_eq!(
            Elements::from_json("x", "FP64", &nested).expect("numbers"),
            Elements::Fp64(vec![1.0, 2.0, 3.0, 4.5])
        );
        let error = Elements::from_json("amount", "FP64", &serde_json::json!([1.0, "two"]))
            .expect_err("refused");
        assert_eq!(error.to_string(), "amount: element 1 is not a number");
        let error =
            Elements::from_json("user", "INT8", &serde_json::json!([1])).expect_err("refused");
        assert!(
            error.to_string().starts_with("user: datatype \"INT8\""),
            "{error}"
        );
    }

    #[test]
    fn shapes_with_negative_or_huge_dimensions_are_refused() {
        let tensor = |shape: Vec<i64>| Tensor::new("t", shape, Elements::Fp64(vec![]));
        assert_eq!(tensor(vec![2, 3]).declared_len().expect("fine"), 6);
        assert!(tensor(vec![-1]).declared_len().is_err());
        assert!(tensor(vec![i64::MAX, i64::MAX]).declared_len().is_err());
    }
}
