//! Client commands: each becomes one or more orders sent to the master over
//! its command socket; the answers are printed for a person or as JSON.
//!
//! The flow is: [`request::plan`] (pure: arguments → orders), [`socket`]
//! (which socket), [`session`] (send, wait, progress), [`render`] (answers →
//! text). This module only wires them together and chooses the exit code; it
//! never runs a master or worker (see `crate::master`, `crate::worker`).
//!
//! Exit codes: 0 every order answered OK; 1 the master answered FAILURE
//! (its message on stderr), or `status` found the proxy degraded (a worker
//! slot down or not answering); 2 a command line that cannot become an order;
//! 3 no answer (no socket, unreadable configuration, timeout, closed
//! connection).

mod render;
mod request;
mod session;
mod socket;
mod table;
#[cfg(test)]
mod tests;
pub(crate) mod tls;
mod top;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sozu_command_lib::command::{
    request::RequestType, response_content::ContentType, Response, ResponseContent, ResponseStatus,
    RunState, Status,
};

use crate::cli::{Command, GlobalArgs};
use request::Plan;
use session::Session;

/// The master answered FAILURE.
const EXIT_FAILURE_ANSWER: u8 = 1;
/// The command line cannot become an order (clap itself also exits 2).
const EXIT_USAGE: u8 = 2;
/// The master could not be reached or did not answer.
const EXIT_NO_ANSWER: u8 = 3;

/// Runs one client command and returns the process exit code.
pub(crate) fn run(global: GlobalArgs, command: Command) -> ExitCode {
    // A relative state or configuration path is resolved here because the
    // master opening it has another working directory.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let plan = match request::plan(&command, &cwd) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let target = match socket::resolve(global.socket.as_deref(), global.config.as_deref()) {
        Ok(target) => target,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(EXIT_NO_ANSWER);
        }
    };
    let timeout = Duration::from_secs(global.timeout);
    let mut session = match Session::connect(&target.socket, timeout, target.max_answer_size) {
        Ok(session) => session,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_NO_ANSWER);
        }
    };
    if let Command::Top(args) = &command {
        return top::run(&mut session, args);
    }
    if let Some(id) = &plan.refuse_existing_cluster {
        if let Err(code) = refuse_existing_cluster(&mut session, id) {
            return code;
        }
    }
    let code = execute(&plan, &mut session, global.json);
    if code != ExitCode::SUCCESS || !plan.then_upgrade_every_worker {
        return code;
    }
    // The master re-executed itself: talk to the new one on a new connection,
    // learn its workers, and replace each in turn.
    drop(session);
    let mut session = match Session::connect(&target.socket, timeout, target.max_answer_size) {
        Ok(session) => session,
        Err(error) => {
            eprintln!("error: the master upgraded but cannot be reached again: {error}");
            return ExitCode::from(EXIT_NO_ANSWER);
        }
    };
    upgrade_every_worker(&mut session, global.json)
}

/// `cluster add` without `--replace`: an existing cluster is refused, so
/// that re-adding one never resets its knobs silently (the wire order
/// replaces a cluster whole).
fn refuse_existing_cluster(session: &mut Session, id: &str) -> Result<(), ExitCode> {
    let query = request::message(RequestType::QueryClusterById(id.to_owned()));
    let answer = match session.order(&query.request, |_| {}) {
        Ok(answer) => answer,
        Err(error) => {
            eprintln!("error: {error}");
            return Err(ExitCode::from(EXIT_NO_ANSWER));
        }
    };
    if answer.status == ResponseStatus::Ok as i32 {
        eprintln!(
            "error: cluster {id:?} already exists; `cluster add --replace` replaces it, \
             resetting every knob not given on the command line"
        );
        return Err(ExitCode::from(EXIT_FAILURE_ANSWER));
    }
    Ok(())
}

/// Asks for the workers, then sends `upgrade_worker` for each running one,
/// one at a time; stops at the first failure.
fn upgrade_every_worker(session: &mut Session, json: bool) -> ExitCode {
    let status = request::step(RequestType::Status(Status {}), request::View::Workers);
    let answer = match session.order(&status.request, |_| {}) {
        Ok(answer) => answer,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_NO_ANSWER);
        }
    };
    let workers: Vec<u32> = match &answer.content {
        Some(ResponseContent {
            content_type: Some(ContentType::Workers(infos)),
        }) => infos
            .vec
            .iter()
            // A booting worker is not upgraded (the master refuses it):
            // `serving` absent is a master that does not say (Sōzu 2.x).
            .filter(|w| w.run_state == RunState::Running as i32 && w.serving != Some(false))
            .map(|w| w.id)
            .collect(),
        _ => {
            eprintln!(
                "error: the master did not list its workers: {}",
                answer.message
            );
            return ExitCode::from(EXIT_FAILURE_ANSWER);
        }
    };
    let steps = workers
        .into_iter()
        .map(|id| request::message(RequestType::UpgradeWorker(id)))
        .collect();
    execute(
        &Plan {
            steps,
            then_upgrade_every_worker: false,
            refuse_existing_cluster: None,
        },
        session,
        json,
    )
}

/// Sends the plan's orders in turn; stops at the first one not answered OK.
fn execute(plan: &Plan, session: &mut Session, json: bool) -> ExitCode {
    for step in &plan.steps {
        let answer = session.order(&step.request, |progress| {
            eprintln!("{}", render::progress(progress));
        });
        let response = match answer {
            Ok(response) => response,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(EXIT_NO_ANSWER);
            }
        };
        print_answer(&step.view, &response, json);
        if step.view == request::View::Workers && response.status == ResponseStatus::Ok as i32 {
            if let Some((_, detail)) = response.message.split_once("; degraded: ") {
                eprintln!("error: the proxy is degraded: {detail}");
                return ExitCode::from(EXIT_FAILURE_ANSWER);
            }
        }
        if response.status != ResponseStatus::Ok as i32 {
            let message = if response.message.is_empty() {
                "the master refused the order without a message"
            } else {
                response.message.as_str()
            };
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_FAILURE_ANSWER);
        }
    }
    ExitCode::SUCCESS
}

/// JSON for every final answer; human text for OK ones only (a failure's
/// message goes to stderr).
fn print_answer(view: &request::View, response: &Response, json: bool) {
    let ok = response.status == ResponseStatus::Ok as i32;
    if ok && *view == request::View::Check {
        return;
    }
    let text = if json {
        match serde_json::to_string_pretty(&render::json(view, response)) {
            Ok(text) => text + "\n",
            Err(error) => {
                eprintln!("error: cannot print the answer as JSON: {error}");
                return;
            }
        }
    } else if response.status == ResponseStatus::Ok as i32 {
        render::human(view, response)
    } else {
        return;
    };
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (`sozu … | head`) is not worth a panic.
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}
