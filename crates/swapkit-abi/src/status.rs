//! Status codes returned by every entry point.

/// What an entry point reports. On anything but [`Status::Ok`], the `out` slice holds a UTF-8
/// message that says what went wrong.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success; `out` holds the encoded result, if the entry point has one.
    Ok = 0,
    /// The plugin panicked; the panic was caught in the glue and `out` holds its message.
    Panic = 1,
    /// A hook (`on_load`, `on_init`) returned an error.
    HookFailed = 2,
    /// The input bytes did not decode as the method's arguments.
    BadInput = 3,
    /// The plugin does not export the interface number it was given.
    UnknownInterface = 4,
    /// The interface has no method with the number it was given.
    UnknownMethod = 5,
    /// The result did not encode.
    EncodeFailed = 6,
    /// A host service refused a request, or the call it made failed.
    ServiceFailed = 7,
    /// An async method was called synchronously and did not complete at once: it awaited.
    WouldAwait = 8,
}

impl Status {
    /// Parses a raw status; `None` for a code this ABI does not define.
    pub fn from_raw(raw: u32) -> Option<Status> {
        Some(match raw {
            0 => Status::Ok,
            1 => Status::Panic,
            2 => Status::HookFailed,
            3 => Status::BadInput,
            4 => Status::UnknownInterface,
            5 => Status::UnknownMethod,
            6 => Status::EncodeFailed,
            7 => Status::ServiceFailed,
            8 => Status::WouldAwait,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Status;

    #[test]
    fn raw_round_trip() {
        for raw in 0..9 {
            assert_eq!(Status::from_raw(raw).unwrap() as u32, raw);
        }
        assert_eq!(Status::from_raw(9), None);
    }
}
