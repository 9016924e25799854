use swapkit_guest::{Error, Host, Plugin};

pub struct P;

impl Plugin for P {
    fn on_load(_host: &Host) -> Result<Self, Error> {
        Ok(P)
    }
}

swapkit_guest::export_plugin! {
    plugin: P,
    name: "p",
}

fn main() {}
