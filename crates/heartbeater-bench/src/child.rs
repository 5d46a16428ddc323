//! Helper processes: the bench re-runs its own binary in a role (a node, a
//! plain tonic echo server, a set of peer responders) so that client and
//! server never share a runtime or a CPU budget.

use std::process::Stdio;

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// A running helper. Ends (stdin closed, then killed) on drop.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The JSON object the helper printed when ready.
    pub ready: Value,
}

impl Helper {
    /// Starts `heartbeater-bench <role args>` and waits for its ready line.
    pub async fn start(args: &[&str]) -> anyhow::Result<Helper> {
        Self::start_with(args, None).await
    }

    /// [`Helper::start`], with the run's cluster key on or off for this
    /// helper alone (`None`: as the run says).
    pub async fn start_with(args: &[&str], keyed: Option<bool>) -> anyhow::Result<Helper> {
        let exe = std::env::current_exe().context("cannot find the bench binary")?;
        Self::spawn(tokio::process::Command::new(exe), args, keyed).await
    }

    /// A helper run by another program: `wrapper` (a program and its
    /// arguments) is given `args`, the bench binary's path first.
    pub async fn start_under(wrapper: &[&str], args: &[&str]) -> anyhow::Result<Helper> {
        let (program, wrapper_args) = wrapper.split_first().context("no wrapper")?;
        let mut command = tokio::process::Command::new(program);
        command.args(wrapper_args);
        Self::spawn(command, args, None).await
    }

    async fn spawn(
        mut command: tokio::process::Command,
        args: &[&str],
        keyed: Option<bool>,
    ) -> anyhow::Result<Helper> {
        match keyed {
            Some(true) => {
                command.env(crate::roles::KEYED_ENV, "1");
            }
            Some(false) => {
                command.env_remove(crate::roles::KEYED_ENV);
            }
            None => {}
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start helper {args:?}"))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("helper stdout")?).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(120), stdout.next_line())
            .await
            .with_context(|| format!("helper {args:?} not ready within 120 s"))??
            .with_context(|| format!("helper {args:?} exited before it was ready"))?;
        let ready: Value =
            serde_json::from_str(&line).with_context(|| format!("helper said {line:?}"))?;
        Ok(Helper {
            child,
            stdin,
            stdout,
            ready,
        })
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("helper already exited")
    }

    /// Sends one command line and reads one JSON answer line.
    pub async fn ask(&mut self, command: &str) -> anyhow::Result<Value> {
        let stdin = self.stdin.as_mut().context("helper stdin closed")?;
        stdin.write_all(format!("{command}\n").as_bytes()).await?;
        stdin.flush().await?;
        let line = self.stdout.next_line().await?.context("helper exited")?;
        Ok(serde_json::from_str(&line)?)
    }

    /// SIGKILL, as a crash.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("kill helper")
    }
}
