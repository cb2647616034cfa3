"""hearth.api.orchestrator.v1.OrchestratorService: thin, over JobService."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from hearth.api.orchestrator.v1 import orchestrator_pb2 as pb
from hearth.api.orchestrator.v1 import orchestrator_pb2_grpc
from orchestratord.api import convert
from orchestratord.domain.service import JobService

SERVICE_NAME = "hearth.api.orchestrator.v1.OrchestratorService"


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Converts requests, calls the job service, converts answers. Errors are
    ``hearth.errors`` exceptions, turned into statuses by the host's
    ErrorInterceptor."""

    def __init__(self, jobs: JobService) -> None:
        self._jobs = jobs

    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitJobResponse:
        result = await self._jobs.submit(convert.draft_from_request(request))
        return pb.SubmitJobResponse(job=convert.job_to_proto(result.job), deduplicated=result.deduplicated)

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=convert.job_to_proto(await self._jobs.get(request.job_id)))

    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        listing = await self._jobs.list(
            request.page_size, request.page_token, convert.state_from_proto(request.state)
        )
        return pb.ListJobsResponse(
            jobs=[convert.job_to_proto(job) for job in listing.jobs], next_page_token=listing.next_page_token
        )

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelJobResponse:
        return pb.CancelJobResponse(
            job=convert.job_to_proto(await self._jobs.cancel(request.job_id, request.reason))
        )

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchJobResponse]:
        write_event = convert.write_event
        if request.batch:
            async for batch in self._jobs.watch_batches(request.job_id, request.after_sequence):
                response = pb.WatchJobResponse()
                add = response.events.add
                for event in batch:
                    write_event(add(), event)
                yield response
            return
        async for event in self._jobs.watch(request.job_id, request.after_sequence):
            response = pb.WatchJobResponse()
            write_event(response.event, event)
            yield response
