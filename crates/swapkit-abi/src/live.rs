//! Live data: a value in a self-describing encoding, with the name of its type and a schema
//! version, so that another version of a plugin (newer or older) can read or migrate it.
//!
//! The encoding is JSON. It names every field, so a reader whose type gained a field with
//! `#[serde(default)]` still reads an older value, and a reader whose type lost a field ignores
//! it: adding a defaulted field needs no migration code. The schema version is for the changes
//! that do (a renamed field, a new meaning).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A value of a plugin- or host-defined type, as it crosses the boundary and as the Vault
/// stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveData {
    /// The type's name, as its writer declared it (for example `"game::Player"`).
    pub type_name: String,
    /// The writer's schema version of that type.
    pub schema: u32,
    /// The value, encoded as JSON.
    pub bytes: Vec<u8>,
}

/// Why a live value did not encode or decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveError(pub String);

impl core::fmt::Display for LiveError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl LiveData {
    /// Encodes `value` as type `type_name`, schema `schema`.
    pub fn encode<T: Serialize + ?Sized>(
        type_name: &str,
        schema: u32,
        value: &T,
    ) -> Result<LiveData, LiveError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| LiveError(alloc::format!("`{type_name}` did not encode: {e}")))?;
        Ok(LiveData {
            type_name: type_name.to_string(),
            schema,
            bytes,
        })
    }

    /// Encodes a [`LiveType`] with its own name and schema.
    pub fn of<T: LiveType>(value: &T) -> Result<LiveData, LiveError> {
        LiveData::encode(T::TYPE_NAME, T::SCHEMA, value)
    }

    /// Decodes the value as `T`, whatever schema wrote it: fields `T` lacks are ignored, and
    /// fields the value lacks take their `#[serde(default)]`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, LiveError> {
        serde_json::from_slice(&self.bytes).map_err(|e| {
            LiveError(alloc::format!(
                "a `{}` of schema {} did not decode as the reader's type: {e}",
                self.type_name,
                self.schema
            ))
        })
    }

    /// Decodes a [`LiveType`], checking the type name first.
    pub fn decode_as<T: LiveType>(&self) -> Result<T, LiveError> {
        if self.type_name != T::TYPE_NAME {
            return Err(LiveError(alloc::format!(
                "the value is a `{}`, not a `{}`",
                self.type_name,
                T::TYPE_NAME
            )));
        }
        self.decode()
    }
}

/// A type that lives in the Vault or crosses the boundary as live data: it names itself and
/// its schema version. Host and plugins that share a value agree on the name; each side may
/// have its own Rust type for it.
pub trait LiveType: Serialize + DeserializeOwned {
    /// The type's name, stable across versions.
    const TYPE_NAME: &'static str;
    /// The schema version this build writes. Raise it when a change needs migration code.
    const SCHEMA: u32 = 1;
}

macro_rules! builtin {
    ($($t:ty => $name:literal),* $(,)?) => {
        $(impl LiveType for $t {
            const TYPE_NAME: &'static str = $name;
        })*
    };
}

builtin! {
    bool => "bool", u8 => "u8", u16 => "u16", u32 => "u32", u64 => "u64", i8 => "i8",
    i16 => "i16", i32 => "i32", i64 => "i64", f32 => "f32", f64 => "f64", String => "String",
}

impl<T: LiveType> LiveType for Vec<T> {
    const TYPE_NAME: &'static str = "Vec";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct V1 {
        name: String,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct V2 {
        name: String,
        #[serde(default)]
        level: u32,
    }

    #[test]
    fn a_defaulted_field_needs_no_migration() {
        let old = LiveData::encode("P", 1, &V1 { name: "a".into() }).unwrap();
        let new: V2 = old.decode().unwrap();
        assert_eq!(
            new,
            V2 {
                name: "a".into(),
                level: 0
            }
        );
        let back = LiveData::encode(
            "P",
            2,
            &V2 {
                name: "b".into(),
                level: 3,
            },
        )
        .unwrap();
        assert_eq!(back.decode::<V1>().unwrap(), V1 { name: "b".into() });
    }

    #[test]
    fn a_wrong_type_is_an_error_naming_both() {
        let v = LiveData::of(&7u64).unwrap();
        let e = v.decode_as::<String>().unwrap_err();
        assert!(e.0.contains("`u64`") && e.0.contains("`String`"), "{e}");
        assert_eq!(v.decode_as::<u64>().unwrap(), 7);
    }
}
