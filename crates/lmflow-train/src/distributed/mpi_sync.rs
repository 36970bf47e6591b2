//! [`GradientSync`] over MPI (cargo feature `mpi`): one process per rank, started by `mpirun`
//! or `srun`, host buffers summed with `MPI_Allreduce`.

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use super::GradientSync;
use crate::error::{Result, TrainError};

/// Elements per MPI call (MPI counts are 32-bit integers).
const MAX_COUNT: usize = 1 << 30;

/// The ranks of `MPI_COMM_WORLD`. Create it once per process, first thing (it initialises MPI,
/// which finalises when it is dropped); all MPI calls come from the thread that created it.
pub struct MpiSync {
    world: SimpleCommunicator,
    local_rank: usize,
    local_size: usize,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

impl std::fmt::Debug for MpiSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiSync")
            .field("rank", &self.rank())
            .field("world_size", &self.world_size())
            .field("local_rank", &self.local_rank)
            .finish()
    }
}

impl MpiSync {
    /// Initialises MPI (threads may compute, only this thread calls MPI) and joins
    /// `MPI_COMM_WORLD`.
    ///
    /// # Errors
    /// [`TrainError::Distributed`] when MPI was already initialised in this process.
    pub fn init() -> Result<Self> {
        let (universe, _level) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| TrainError::Distributed {
                rank: 0,
                message: "MPI is already initialised in this process".into(),
            })?;
        let world = universe.world();
        // The processes sharing this node, to pick a GPU per process.
        let node = world.split_shared(world.rank());
        let (local_rank, local_size) = (node.rank() as usize, node.size() as usize);
        Ok(Self {
            world,
            local_rank,
            local_size,
            _universe: universe,
        })
    }

    /// This process's rank among the processes on its node (the GPU index to use).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Number of processes on this node.
    pub fn local_size(&self) -> usize {
        self.local_size
    }
}

/// Ends every process of the MPI job with `code` (`MPI_Abort`): what a rank that failed must do,
/// since the others would otherwise wait for it in their next collective for ever.
pub fn abort_world(code: i32) -> ! {
    SimpleCommunicator::world().abort(code)
}

impl GradientSync for MpiSync {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        for chunk in buf.chunks_mut(MAX_COUNT) {
            let send = chunk.to_vec();
            self.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        for chunk in buf.chunks_mut(MAX_COUNT) {
            let send = chunk.to_vec();
            self.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
        Ok(())
    }

    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        if root >= self.world_size() {
            return Err(TrainError::Distributed {
                rank: self.rank(),
                message: format!("broadcast from rank {root}, which does not exist"),
            });
        }
        let process = self.world.process_at_rank(root as i32);
        for chunk in buf.chunks_mut(MAX_COUNT) {
            process.broadcast_into(chunk);
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "mpi"
    }
}
