//! The live loop of the modes that print every event as it comes (the default trace and
//! `demo`): print, flush when the printer idles, until the mode stops or stdout closes. One
//! loop, so that both stop alike on a closed stdout (e.g. `| head`).

use anyhow::Result;

use super::stop::{Stop, Why};
use crate::{event::Event, session::Session, sink::Printer};

/// Print the events `shown` picks until `stop` fires (`Some(why)`) or stdout closes (`None`:
/// finish quietly, nothing more to print).
pub async fn print_events(
    session: &mut Session,
    printer: &mut Printer,
    stop: &mut Stop,
    shown: impl Fn(&Event) -> bool,
) -> Result<Option<Why>> {
    loop {
        tokio::select! {
            events = session.next_events() => {
                for e in events? {
                    if shown(&e) && printer.event(&e).is_err() {
                        return Ok(None);
                    }
                }
                if printer.flush().is_err() {
                    return Ok(None);
                }
            }
            _ = printer.idle() => {
                if printer.flush().is_err() {
                    return Ok(None);
                }
            }
            why = stop.wait() => return Ok(Some(why)),
        }
    }
}
